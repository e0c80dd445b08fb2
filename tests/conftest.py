"""Shared fixtures: configs, the daemon app on a real 127.0.0.1 socket, fake carrier APIs."""

from __future__ import annotations

import copy
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from patterd.app import build_app
from patterd.config import Config, build_config
from patterd.gateway import GATEWAY, Gateway
from patterd.patter import carrier_for
from tests.support.fake_carriers import FakeTelnyx, FakeTwilio
from tests.support.signing import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, TelnyxSigner

PHONE = "+15550001234"
TELNYX_KEY = "KEY0123456789ABCDEF"


def twilio_raw(**sections: Any) -> dict[str, Any]:
    """A minimal valid Twilio config as a YAML-shaped dict, with overrides merged in."""
    raw: dict[str, Any] = {
        "server": {"public_url": PUBLIC_URL},
        "phone_number": PHONE,
        "carrier": {"provider": "twilio", "account_sid": TWILIO_SID,
                    "auth_token": TWILIO_TOKEN, "configure_number": False},
        "store": {"url": "sqlite:///:memory:"},
    }
    return _merge(raw, sections)


def telnyx_raw(public_key: str, **sections: Any) -> dict[str, Any]:
    """A minimal valid Telnyx config."""
    raw: dict[str, Any] = {
        "server": {"public_url": PUBLIC_URL},
        "phone_number": PHONE,
        "carrier": {"provider": "telnyx", "api_key": TELNYX_KEY, "public_key": public_key,
                    "connection_id": "2811212257810187875"},
        "store": {"url": "sqlite:///:memory:"},
    }
    return _merge(raw, sections)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_LOCAL_NAMES = {"localhost", "localhost.localdomain", socket.gethostname()}
_real_getaddrinfo = socket.getaddrinfo


def _loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
    """socket.getaddrinfo for the tests: names and addresses off this machine are refused at
    once (tests talk only to 127.0.0.1 / ::1; a default cloud URL left in a test config would
    otherwise wait for a timeout, or reach the internet)."""
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name not in _LOCAL_NAMES:
        try:
            local = ipaddress.ip_address(name.split("%")[0]).is_loopback or \
                ipaddress.ip_address(name.split("%")[0]).is_unspecified
        except ValueError:
            local = False
        if not local:
            raise socket.gaierror(socket.EAI_NONAME,
                                  f"the tests talk only to 127.0.0.1 and ::1, not {name}")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def _no_network_off_this_machine():  # type: ignore[no-untyped-def]
    """In this process, every name lookup off the machine fails fast (daemons run in child
    processes are given local URLs by their tests)."""
    socket.getaddrinfo = _loopback_only
    yield
    socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture(autouse=True)
def _restore_logging():  # type: ignore[no-untyped-def]
    """Tests that configure logging (to a captured stream) must not leak it to later tests."""
    import logging

    import structlog
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def telnyx_signer() -> TelnyxSigner:
    """A fresh Ed25519 key standing in for Telnyx's."""
    return TelnyxSigner()


@pytest.fixture
async def fake_twilio() -> AsyncIterator[tuple[FakeTwilio, str]]:
    """The fake Twilio API on 127.0.0.1 and its base URL."""
    fake = FakeTwilio(TWILIO_SID, TWILIO_TOKEN, [PHONE])
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def fake_telnyx() -> AsyncIterator[tuple[FakeTelnyx, str]]:
    """The fake Telnyx API on 127.0.0.1 and its ``…/v2`` base URL."""
    fake = FakeTelnyx(TELNYX_KEY)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/v2"))
    await server.close()


DaemonFactory = Callable[[Config], Any]


@pytest.fixture
async def daemon() -> AsyncIterator[DaemonFactory]:
    """Start the daemon's app for a config on a real 127.0.0.1 socket; returns a client."""
    clients: list[TestClient] = []

    async def start(cfg: Config, backends: Any = None, *, real: bool = False) -> TestClient:
        """``real``: the providers the config names (loaded like the daemon does)."""
        from tests.support.stub_backends import stub_backends
        if not real and backends is None:
            backends = stub_backends(cfg)
        app = build_app(cfg, carrier_for(cfg.carrier), backends=backends)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def gateway_of(client: TestClient) -> Gateway:
    """The gateway state behind a started daemon."""
    return client.server.app[GATEWAY]


def config(raw: dict[str, Any]) -> Config:
    """Validate a raw config with an empty environment."""
    return build_config(raw, env={})
