"""Outbound calls, simulated: ask the daemon's admin API to place a call, then be the carrier
(and the callee) for it. Typical use from a test::

    from patterd.simulate import Callee, simulate_outbound

    r = await simulate_outbound(config, "http://127.0.0.1:8000", "+15557654321",
                                Callee("machine"), admin_token=TOKEN, machine_detection=True,
                                voicemail_message="Please call us back.")
    assert r.ok and r.answered_by == "machine_end_beep" and r.said == ["Please call us back."]

``carrier.api_base_url`` must be a local ``http://`` URL: the daemon places the call through
the carrier's REST API, which the simulator serves there (see :mod:`patterd.simulate.api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from ..config import Config, TwilioSettings
from .api import CarrierApi
from .callee import Callee, Pending, machine_greeting
from .outbound_result import OutboundResult
from .results import ERROR
from .runner import SimulationError, make_api
from .telnyx import TelnyxSigner
from .telnyx_out import TelnyxOutboundCall
from .twilio_create import CreateRequest
from .twilio_out import TwilioOutboundCall

ADMIN_PATH = "/v1/calls"
PLACE_WAIT = 5.0        # after a 201, how long the carrier request may still take to show
SETTLE = 0.3            # after the call, REST requests the daemon may still send


async def simulate_outbound(config: Config, url: str, to: str, callee: Callee | None = None,
                            *, admin_token: str, machine_detection: bool | None = None,
                            voicemail_message: str | None = None,
                            variables: dict[str, Any] | None = None,
                            signer: TelnyxSigner | None = None, api: CarrierApi | None = None,
                            session: aiohttp.ClientSession | None = None,
                            timeout: float = 120.0, settle: float = SETTLE,
                            keep_audio: bool = True) -> OutboundResult:
    """Have the daemon at ``url`` call ``to`` and play the carrier and ``callee`` (default: a
    person who listens to the agent, then hangs up).

    ``machine_detection`` / ``voicemail_message`` / ``variables``: sent to ``POST /v1/calls``
    when given (None: left out, so the daemon's defaults apply). ``signer``: the Telnyx webhook
    key. ``api``: a started :class:`CarrierApi` to share (None: one is started for this call).
    ``timeout``: the longest the call may last. Returns an :class:`OutboundResult`.
    """
    callee = callee or Callee()
    carrier = "twilio" if isinstance(config.carrier, TwilioSettings) else "telnyx"
    own_api = api is None
    if own_api:
        api = make_api(config)
        if api is None:
            raise SimulationError(
                f"carrier.api_base_url {config.carrier.api_base_url!r} is not a local http:// "
                "URL: the daemon places calls through the carrier's REST API, which the "
                "simulator must serve (e.g. http://127.0.0.1:9090)")
        try:
            await api.start()
        except OSError as exc:
            raise SimulationError(f"cannot listen on {api.base_url} (carrier.api_base_url): "
                                  f"{exc.strerror or exc}") from None
    assert api is not None
    sess = session or aiohttp.ClientSession()
    greeting, seconds, notes = (await machine_greeting(callee) if callee.kind == "machine"
                                else (None, 0.0, []))
    common: dict[str, Any] = dict(session=sess, api=api, timeout=timeout,
                                  keep_audio=keep_audio, greeting=greeting,
                                  greeting_seconds=seconds)

    def make(request: Any) -> TwilioOutboundCall | TelnyxOutboundCall:
        call: TwilioOutboundCall | TelnyxOutboundCall
        if isinstance(request, CreateRequest):
            call = TwilioOutboundCall(config, url, callee, request, **common)
        else:
            call = TelnyxOutboundCall(config, url, callee, request, signer=signer, **common)
        call.result.warnings.extend(notes)
        assert api is not None
        api.watchers[call.call_id] = call.result.add_request
        return call

    pending = Pending(to, callee, make)
    api.pending.setdefault(to, []).append(pending)
    try:
        status, body = await _place(sess, url, admin_token, to, machine_detection,
                                    voicemail_message, variables)
        if pending.call is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pending.arrived.wait(),
                                       PLACE_WAIT if status == 201 else 0.2)
        if pending.task is None:
            result = OutboundResult(carrier, "", to=to, callee=callee.kind,
                                    requests=list(pending.refused))
            result.outcome = ERROR
            result.detail = (f"the daemon answered HTTP {status} to POST {ADMIN_PATH} and did "
                             "not ask the carrier to place the call" if status != 201 else
                             f"the daemon answered 201 but asked the carrier for no call "
                             f"within {PLACE_WAIT:g} s")
            result.errors.append(result.detail)
        else:
            result = await pending.task
            await asyncio.sleep(settle)
        _admin(result, status, body)
        return result
    finally:
        api.pending[to].remove(pending)
        if not api.pending[to]:
            del api.pending[to]
        if pending.call is not None:
            api.watchers.pop(pending.call.call_id, None)
        if session is None:
            await sess.close()
        if own_api:
            await api.close()


async def _place(session: aiohttp.ClientSession, url: str, token: str, to: str,
                 amd: bool | None, voicemail: str | None, variables: dict[str, Any] | None
                 ) -> tuple[int, Any]:
    doc: dict[str, Any] = {"to": to}
    if amd is not None:
        doc["machine_detection"] = amd
    if voicemail is not None:
        doc["voicemail_message"] = voicemail
    if variables is not None:
        doc["variables"] = variables
    try:
        async with session.post(url.rstrip("/") + ADMIN_PATH, json=doc,
                                headers={"Authorization": f"Bearer {token}"},
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            try:
                body: Any = await resp.json(content_type=None)
            except ValueError:
                body = (await resp.text())[:500]
            return resp.status, body
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        return 0, f"cannot reach the daemon at {url}: {exc or type(exc).__name__}"


def _admin(result: OutboundResult, status: int, body: Any) -> None:
    result.admin_status, result.admin_body = status, body
    call_id = body.get("call_id") if isinstance(body, dict) else None
    result.admin_call_id = call_id if isinstance(call_id, str) else ""
    if status == 201 and result.call_id and result.admin_call_id != result.call_id:
        result.errors.append(f"POST {ADMIN_PATH} answered call_id {result.admin_call_id!r}, "
                             f"not the carrier's {result.call_id!r}")
    elif status not in (201, 0) and result.call_id:
        result.errors.append(f"POST {ADMIN_PATH} answered HTTP {status} although the carrier "
                             f"placed the call {result.call_id}")
    if status == 0:
        result.errors.append(str(body))
    if not result.started_at:
        result.started_at = time.time()
