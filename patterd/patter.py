"""``Patter``: a phone number, a carrier and an agent — the object the daemon runs.

The Patter SDK's surface (``Patter(carrier=…, phone_number=…)``, ``phone.agent(…)``,
``await phone.serve(agent, port=…)``, ``await phone.call(to=…)``) over the same typed
configuration as the YAML file (``docs/configuration.md``): keyword arguments are its
sections, and everything is validated by the same reader. Patter arguments that have no meaning
here raise ``TypeError`` saying what to do instead (:mod:`patterd.migration`).
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .agent import AGENT_KEYS, LAYERS, Agent, agent_sections, section
from .carriers.base import Carrier
from .config import Config, ConfigError, TelnyxSettings, TwilioSettings, build_config, load_config
from .config.load import carrier_problems
from .config.model import DEFAULT_SYSTEM_PROMPT
from .migration import CALL, PATTER, SERVE, refuse

SECTIONS = ("server", "agent", "stt", "llm", "tts", "vad", "recording", "store", "admin",
            "logging", "pricing")
_NO_URL = "https://public-url.invalid"   # stands in while building when none is known yet
PUBLIC_URL_MISSING = (
    "server.public_url: required: the base URL the carrier reaches — pass "
    "Patter(webhook_url='abc.ngrok.app') (a host or an https:// URL) or set PATTERD_PUBLIC_URL")


def carrier_for(settings: TwilioSettings | TelnyxSettings) -> Carrier:
    """The carrier object for validated settings."""
    if isinstance(settings, TwilioSettings):
        from .carriers.twilio import Carrier as Twilio
        return Twilio.from_settings(settings)
    from .carriers.telnyx import Carrier as Telnyx
    return Telnyx.from_settings(settings)


def public_url_of(webhook_url: str) -> str:
    """``webhook_url`` as a base URL: a bare host (Patter's form, ``abc.ngrok.app``) is
    ``https://``; a URL is kept as given (``http://`` for a local daemon)."""
    url = webhook_url.strip().rstrip("/")
    if url and "://" not in url:
        url = "https://" + url
    return url


class Patter:
    """A voice agent on ``phone_number`` through ``carrier`` (a :class:`patterd.Twilio` or
    :class:`patterd.Telnyx`).

    The public base URL the carrier reaches comes from ``webhook_url=`` (a host such as
    ``abc.ngrok.app``, or an ``https://`` URL), else ``server={"public_url": …}``, else
    ``PATTERD_PUBLIC_URL``; construction needs none, :meth:`serve` does. Other keyword
    arguments are sections of the YAML file (``agent=``, ``stt=``, ``llm=``, ``tts=``,
    ``vad=``, ``server=``, ``recording=``, ``store=``, ``admin=``, ``logging=``, ``pricing=``)
    as mappings; ``stt``/``llm``/``tts``/``vad`` also take a provider name. Like the file they
    read the process environment: ``${VAR}`` is expanded and empty settings fall back to their
    variables (``PATTERD_ADMIN_TOKEN``, ``OPENAI_API_KEY``, …; see docs/configuration.md).
    """

    def __init__(self, carrier: Carrier | None = None, phone_number: str = "",
                 webhook_url: str = "", *, public_url: str = "", config: Config | None = None,
                 **settings: Any) -> None:
        self.carrier = _check_carrier(carrier)
        _check_settings(settings)
        if webhook_url and public_url and public_url_of(webhook_url) != public_url_of(public_url):
            raise TypeError("Patter(): give webhook_url= or public_url=, not both")
        self.phone_number = phone_number
        self._url = public_url_of(webhook_url or public_url)
        self._raw: dict[str, Any] = {
            k: section(k, v) if k in LAYERS and v is not None else v
            for k, v in settings.items() if k in SECTIONS}   # the rest were harmless
        self._gateway: Any = None                     # the running daemon's, while serve() runs
        self._stop: asyncio.Event | None = None
        self._served: asyncio.Event | None = None     # set when serve() has returned
        self._ready: asyncio.Future[str] | None = None
        if config is None:
            config = self._build(self._raw)
        elif config.carrier != self.carrier.settings:
            config = replace(config, carrier=self.carrier.settings)
        self.config = config
        self.config_path: Path | None = None   # the file SIGHUP re-reads (from_config)

    @classmethod
    def from_config(cls, path: str | Path) -> Patter:
        """The daemon described by a YAML file (see docs/configuration.md)."""
        config = load_config(path)
        self = cls(carrier_for(config.carrier), config.phone_number, config=config)
        self.config_path = Path(path)
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if isinstance(raw, dict):   # what phone.agent(...) starts from
            self._raw = {k: v for k, v in raw.items() if k in SECTIONS}
        return self

    # -- building the configuration ------------------------------------------------------
    def _build(self, raw: Mapping[str, Any]) -> Config:
        """The typed config for raw sections, around this carrier and phone number."""
        tree = copy.deepcopy(dict(raw))
        server = dict(tree.pop("server", None) or {})
        if self._url:
            server["public_url"] = self._url
        else:
            server.setdefault("public_url", os.environ.get("PATTERD_PUBLIC_URL", ""))
        missing = not server["public_url"]
        if missing:
            server["public_url"] = _NO_URL
        tree["server"] = server
        tree["phone_number"] = self.phone_number
        # The carrier is checked at serve(): build the rest around a placeholder section of
        # the same provider, then put the real settings in.
        tree["carrier"] = _placeholder(self.carrier.settings)
        config = replace(build_config(tree), carrier=self.carrier.settings)
        if missing:
            config = replace(config, server=replace(config.server, public_url=""))
        return config

    def agent(self, system_prompt: str | None = None, *, first_message: str | None = None,
              voice: str | None = None, language: str | None = None, stt: Any = None,
              llm: Any = None, tts: Any = None, vad: Any = None, model: str | None = None,
              tools: list[Any] | None = None, variables: Mapping[str, str] | None = None,
              rules: list[Mapping[str, Any]] | None = None, fallback: str | None = None,
              **more: Any) -> Agent:
        """An :class:`~patterd.agent.Agent` for :meth:`serve`: this object's own sections with
        these arguments over them, validated like the YAML file (a problem raises
        :class:`~patterd.config.ConfigError` naming the key).

        ``stt``/``llm``/``tts``/``vad``: a provider name (``"deepgram"``) or its section as a
        mapping (``{"provider": "openai", "model": "gpt-4o-mini"}``); ``voice`` is the TTS
        voice, ``model`` the LLM's; ``tools``: mappings in the ``llm.tools`` shape (HTTPS
        endpoints; a Patter ``Tool`` with a ``webhook_url`` works too); ``rules``/``fallback``:
        the offline ``rules`` agent's. Any key of the ``agent:`` section is accepted too
        (``voicemail_message``, ``transfer_targets``, ``barge_in``, ``silence_timeout``, …).
        """
        given = dict(system_prompt=system_prompt, first_message=first_message, voice=voice,
                     language=language, stt=stt, llm=llm, tts=tts, vad=vad, model=model,
                     tools=tools, variables=variables, rules=rules, fallback=fallback, **more)
        raw = {**self._raw, **agent_sections(self._raw, given)}
        return Agent.of(self._build(raw))

    def _serving(self, agent: Agent | None, port: int | None, host: str | None,
                 recording: bool | None, voicemail_message: str | None) -> Config:
        """The configuration :meth:`serve` runs, checked for what only serving needs."""
        config = self.config
        if agent is not None:
            if not isinstance(agent, Agent):
                raise TypeError(f"serve(): agent= expected what phone.agent(...) returns, got "
                                f"{type(agent).__name__}")
            config = agent.applied_to(config)
        server = config.server
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"serve(): port= expected an integer from 0 to 65535, "
                                 f"got {port!r}")
            server = replace(server, port=port)
        if host is not None:
            if not isinstance(host, str) or not host:
                raise ValueError(f"serve(): host= expected an address like '127.0.0.1', "
                                 f"got {host!r}")
            server = replace(server, host=host)
        config = replace(config, server=server)
        if recording is not None:
            config = replace(config, recording=replace(config.recording,
                                                       enabled=bool(recording)))
        if voicemail_message is not None:
            config = replace(config, agent=replace(config.agent,
                                                   voicemail_message=voicemail_message))
        problems = [] if config.server.public_url else [PUBLIC_URL_MISSING]
        problems += carrier_problems(config.carrier)
        if problems:
            raise ConfigError(problems)
        return config

    # -- running -------------------------------------------------------------------------
    async def serve(self, agent: Agent | None = None, port: int | None = None,
                    host: str | None = None, *, recording: bool | None = None,
                    voicemail_message: str | None = None, setup_logging: bool | None = None,
                    **patter_only: Any) -> None:
        """Run the daemon until SIGTERM/SIGINT or :meth:`disconnect` (then drain). This is
        ``patterd --config``.

        ``agent``: from :meth:`agent` (default: this object's own sections). ``port``/``host``
        override ``server.port``/``server.host``; ``recording=True`` turns carrier recording
        on; ``voicemail_message`` is what a machine hears. Raises
        :class:`~patterd.config.ConfigError` when the public URL is unknown (naming
        ``webhook_url=`` and ``PATTERD_PUBLIC_URL``) or the carrier's credentials are
        malformed. :attr:`ready` resolves once it listens.

        Logging is set up as the daemon's (``logging:`` of the config: one JSON object per line
        on stderr, phone numbers masked, secrets dropped) unless this process has configured
        structlog already: an application with its own structlog set-up keeps it (add
        :func:`patterd.ops.logging.scrub_processor` to it to keep the masking).
        ``setup_logging=True`` always sets patterd's up, ``False`` never touches logging.

        SIGHUP reloads the file of :meth:`from_config` (when ``serve()`` overrides nothing of
        it); a ``Patter`` built from arguments has no file, so SIGHUP is logged and ignored
        (the process and its calls go on).
        """
        import structlog

        from .ops.logging import configure_logging, get_logger
        from .server import serve
        refuse("serve()", patter_only, SERVE, ("agent", "port", "host", "recording",
                                               "voicemail_message", "setup_logging"))
        overrides = (agent, port, host, recording, voicemail_message)
        config = self._serving(agent, port, host, recording, voicemail_message)
        if setup_logging or (setup_logging is None and not structlog.is_configured()):
            configure_logging(config.logging.level, config.logging.format)
        if config.llm.provider == "rules" and config.agent.system_prompt != DEFAULT_SYSTEM_PROMPT:
            get_logger("patterd").info(
                "system_prompt_unused", detail="the offline rules agent answers from its rules; "
                "a language model follows the system prompt (llm='openai' or 'anthropic')")
        self.config = config
        loop = asyncio.get_running_loop()
        if self._ready is None or self._ready.done() or self._ready.get_loop() is not loop:
            self._ready = loop.create_future()
        self._stop, self._served = asyncio.Event(), asyncio.Event()
        path = self.config_path if all(o is None for o in overrides) else None
        try:
            await serve(config, self.carrier, config_path=path, stop=self._stop,
                        on_ready=self._listening)
        except BaseException as exc:
            ready = self._ready
            if not ready.done():
                if isinstance(exc, asyncio.CancelledError):
                    ready.cancel()
                else:
                    ready.set_exception(exc)
                    ready.exception()     # retrieved: no "never retrieved" noise if unawaited
            raise
        finally:
            self._gateway = None
            self._stop = None
            if self._ready.done() and not self._ready.cancelled() \
                    and self._ready.exception() is None:
                self._ready = None       # the next serve() gets a fresh one
            self._served.set()

    def _listening(self, gateway: Any) -> None:
        self._gateway = gateway
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(self.config.server.public_url)

    @property
    def ready(self) -> asyncio.Future[str]:
        """Resolves to the public URL once :meth:`serve` listens (and raises what stopped it
        before that): ``asyncio.create_task(phone.serve(agent)); await phone.ready``."""
        loop = asyncio.get_running_loop()
        if self._ready is None or self._ready.get_loop() is not loop:
            self._ready = loop.create_future()
        return self._ready

    async def disconnect(self) -> None:
        """Stop :meth:`serve` as SIGTERM does (new calls declined, live calls may finish, up
        to ``server.drain_timeout``) and return once it has returned."""
        if self._stop is not None and self._served is not None:
            self._stop.set()
            await self._served.wait()

    async def call(self, to: str, agent: Agent | None = None, *,
                   machine_detection: bool | None = None, voicemail_message: str | None = None,
                   ring_timeout: int | None = None, variables: Mapping[str, str] | None = None,
                   **patter_only: Any) -> str:
        """Place an outbound call through the running :meth:`serve` and return its call id.

        ``machine_detection``/``voicemail_message`` default to the agent's; ``ring_timeout``
        (seconds, 5–600, default 30) is how long the phone rings; ``variables`` fill
        ``{name}`` placeholders in every message and prompt for this call. The call uses the
        agent being served (``agent``, when given, must be that one). Raises
        :class:`patterd.CallError` when the carrier does not take the call.
        """
        from .call.outbound import parse_outbound, place_call
        refuse("call()", _meaningful_call_args(patter_only, self.config.phone_number), CALL,
               ("to", "agent", "machine_detection", "voicemail_message", "ring_timeout",
                "variables"))
        gw = self._gateway
        if gw is None:
            raise RuntimeError("phone.call() places calls through this process's serve(): "
                               "start it first — task = asyncio.create_task(phone.serve(agent))"
                               "; await phone.ready — or use `patterd call` for a daemon "
                               "running elsewhere")
        if agent is not None and agent != Agent.of(gw.config):
            raise ValueError("phone.call(): one agent per daemon — the call uses the agent "
                             "serve() runs; per call, pass variables= for its {placeholders}")
        body: dict[str, Any] = {"to": to}
        for key, value in (("machine_detection", machine_detection),
                           ("voicemail_message", voicemail_message),
                           ("ring_timeout", ring_timeout), ("variables", variables)):
            if value is not None:
                body[key] = dict(value) if isinstance(value, Mapping) else value
        try:
            outbound = parse_outbound(body, default_amd=gw.config.agent.machine_detection,
                                      default_voicemail=gw.config.agent.voicemail_message,
                                      agent_variables=gw.config.agent.variables)
        except ValueError as exc:
            raise ValueError(f"phone.call(): {exc}") from None
        if gw.draining:
            raise RuntimeError("phone.call(): the daemon is draining: no new calls")
        return await place_call(gw, outbound)

    async def test(self, *args: Any, **kwargs: Any) -> None:
        """Patter's text-only test session has no counterpart here: ``patterd simulate`` places
        a whole simulated call (signed webhooks, real-time audio) against :meth:`serve`."""
        raise NotImplementedError(
            "phone.test() has no counterpart in patterd: run serve() and place a simulated "
            "call with `patterd simulate --config PATH --say \"hello\"` (or "
            "patterd.simulate.simulate_call from Python)")

    def build_app(self) -> web.Application:
        """The aiohttp application (for embedding and tests)."""
        from .app import build_app
        config = self._serving(None, None, None, None, None)
        return build_app(config, self.carrier)

    def __repr__(self) -> str:
        return (f"Patter(carrier={self.carrier!r}, phone_number={self.phone_number!r}, "
                f"public_url={self.config.server.public_url!r})")


def _check_carrier(carrier: Any) -> Carrier:
    from .carriers.telnyx import Carrier as Telnyx
    from .carriers.twilio import Carrier as Twilio
    if isinstance(carrier, (Twilio, Telnyx)):
        return carrier
    if carrier is None:
        raise TypeError("Patter(): carrier= is required: a Twilio(...) or Telnyx(...) instance")
    raise TypeError("Patter(): carrier= must be a Twilio(...) or Telnyx(...) instance "
                    f"(from patterd import Twilio, Telnyx), got {type(carrier).__name__} "
                    f"{carrier!r}"[:300])


def _check_settings(settings: Mapping[str, Any]) -> None:
    """Sections are known; Patter-only arguments and agent keys get a clear error."""
    for name in settings:
        if name in AGENT_KEYS or name in ("voice", "model", "tools"):
            raise TypeError(f"Patter(): {name}= belongs to the agent: phone.agent({name}=…)")
    refuse("Patter()", {k: v for k, v in settings.items() if k not in SECTIONS}, PATTER,
           (*SECTIONS, "carrier", "phone_number", "webhook_url", "public_url"))


def _meaningful_call_args(given: Mapping[str, Any], phone_number: str) -> dict[str, Any]:
    """Patter's call() arguments minus those that ask for what happens anyway."""
    out = dict(given)
    if out.get("from_number") in ("", None, phone_number):
        out.pop("from_number", None)
    return out


def _placeholder(settings: TwilioSettings | TelnyxSettings) -> dict[str, Any]:
    if isinstance(settings, TwilioSettings):
        return {"provider": "twilio", "account_sid": "AC" + "0" * 32, "auth_token": "x",
                "configure_number": settings.configure_number}
    return {"provider": "telnyx", "api_key": "x", "require_signature": False}


__all__ = ["Patter", "ConfigError", "PUBLIC_URL_MISSING", "carrier_for", "public_url_of"]
