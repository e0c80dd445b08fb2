"""YAML file → :class:`Config`, with every problem reported at once."""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from ..ops.pricing import merge_pricing
from .backends import E164, is_dial_target, read_backend
from .bounded_yaml import MAX_FILE_BYTES, YamlLimitError, load_yaml
from .hints import cause_first, unquoted_number_hint, yaml_syntax_problem
from .masking import mask_url
from .model import (DEFAULT_SYSTEM_PROMPT, AdminConfig, AgentConfig, CarrierSettings, Config, LoggingConfig,
                    RecordingConfig, ServerConfig, StoreConfig, TelemetryConfig, TelnyxSettings,
                    TwilioSettings)
from .reader import Problems, Section, environ, expand_env
from .secrets import admin_token_problem, credential_problem

TWILIO_SID = re.compile(r"AC[0-9a-fA-F]{32}")
MAX_RETENTION_DAYS = 36_500   # a century; beyond that "0" (forever) is what is meant


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists each one as ``key.path: what was expected``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML file at ``path`` (at most ``MAX_FILE_BYTES``; see
    :mod:`.bounded_yaml` for the other limits). Blocking: the running daemon calls it in a
    worker thread."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file ({exc.strerror or exc})"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: the file is larger than {_size(MAX_FILE_BYTES)} (the "
                           "limit for a config file)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the file is not UTF-8 text"]) from None
    return parse_config(text, env, source=str(path))


def parse_config(text: str, env: Mapping[str, str] | None = None, *,
                 source: str = "<config>") -> Config:
    """Validate YAML text (within the limits of :mod:`.bounded_yaml`)."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([f"{source}: the text is larger than {_size(MAX_FILE_BYTES)} (the "
                           "limit for a config file)"])
    with collector_paused():
        return build_config(_parse_yaml(text, source), env)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return load_yaml(text)
    except YamlLimitError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{source}: refused{where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_syntax_problem(exc, source, text)]) from None
    except ValueError as exc:   # e.g. an integer of more digits than Python converts
        raise ConfigError([f"{source}: a value cannot be read: "
                           f"{str(exc).split(';')[0]}"]) from None


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a file is parsed and checked.

    A large file allocates hundreds of thousands of short-lived objects (nodes, marks, the
    expanded tree), and the collector's full collections over them hold the GIL: in the
    running daemon, where the parse is in a worker thread, they stalled the event loop for
    100–240 ms at a time (measured with a 40,000-node file; 20–60 ms without them). Those
    objects form no cycles for the collector to find: reference counting frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def build_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML tree (a mapping)."""
    env = environ() if env is None else env
    problems = Problems()
    if raw is None:
        raw = {}
    raw = expand_env(raw, "", problems, env)
    root = Section(raw, "", problems)
    server = _read_server(root.section("server"))
    phone = root.str("phone_number", pattern=E164, expected="an E.164 number like +15550001234")
    carrier = read_carrier(root.section("carrier"), env)
    if (isinstance(carrier, TwilioSettings) and carrier.configure_number and not phone
            and not root.has("phone_number")):   # an invalid one is reported already
        problems.append("phone_number: required when carrier.configure_number is true "
                        "(an E.164 number like +15550001234)")
    agent = _read_agent(root.section("agent"))
    stt = read_backend(root, "stt", agent, env)
    llm = read_backend(root, "llm", agent, env)
    tts = read_backend(root, "tts", agent, env)
    vad = read_backend(root, "vad", agent, env)
    rec = root.section("recording")
    enabled = rec.bool("enabled", False)
    channels = rec.str("channels", "dual", choices=("mono", "dual"))
    recording = RecordingConfig(enabled, channels, rec.str("local_dir"))  # type: ignore[arg-type]
    if recording.local_dir:
        problem = check_local_dir(recording.local_dir)
        if problem:
            rec.problem("local_dir", problem)
    rec.done()
    st = root.section("store")
    store = StoreConfig(st.str("url", "sqlite:///./patterd.db"),
                        retention_days=st.float("retention_days", 0.0, minimum=0,
                                                maximum=MAX_RETENTION_DAYS),
                        max_pending=st.int("max_pending", 10_000, minimum=10))
    if not re.match(r"(sqlite:///|postgres(ql)?://)", store.url):
        st.problem("url", f"expected sqlite:///PATH or postgresql://…, got {mask_url(store.url)!r}")
    st.done()
    ad = root.section("admin")
    admin = AdminConfig(ad.str("token") or env.get("PATTERD_ADMIN_TOKEN", ""))
    if admin.token:
        problem = admin_token_problem(admin.token)
        if problem:
            ad.problem("token", problem)
    ad.done()
    lg = root.section("logging")
    logging_cfg = LoggingConfig(
        lg.str("level", "info", choices=("debug", "info", "warning", "error")),  # type: ignore[arg-type]
        lg.str("format", "json", choices=("json", "console")))  # type: ignore[arg-type]
    lg.done()
    telemetry = _read_telemetry(root.section("telemetry"), env)
    root.known.add("pricing")
    pricing = merge_pricing(raw.get("pricing") if isinstance(raw, dict) else None,
                            "pricing", problems)
    root.done()
    if problems:
        raise ConfigError(cause_first(_one_per_env_path(problems)))
    return Config(server=server, phone_number=phone, carrier=carrier, agent=agent, stt=stt,
                  llm=llm, tts=tts, vad=vad, recording=recording, store=store, admin=admin,
                  logging=logging_cfg, pricing=MappingProxyType(pricing), telemetry=telemetry)


def otel_installed() -> bool:
    """Whether the ``otel`` extra (the OpenTelemetry SDK and OTLP/HTTP exporter) is there."""
    import importlib.util
    try:
        return all(importlib.util.find_spec(m) is not None for m in (
            "opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"))
    except ModuleNotFoundError:
        return False


def _read_telemetry(t: Section, env: Mapping[str, str]) -> TelemetryConfig:
    """``telemetry:``; ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_SERVICE_NAME`` stand in for
    unset keys (the environment's endpoint only where the otel extra is installed: a
    variable meant for other programs never stops this one)."""
    endpoint = t.str("otlp_endpoint").rstrip("/")
    service = t.str("service_name") or env.get("OTEL_SERVICE_NAME", "") or "patterd"
    if endpoint and not otel_installed():
        t.problem("otlp_endpoint", "tracing needs the otel extra: pip install 'patterd[otel]'")
        endpoint = ""
    if not endpoint and otel_installed():
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/")
    if endpoint and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", endpoint):
        t.problem("otlp_endpoint", f"expected an http(s):// URL, got {mask_url(endpoint)!r}")
        endpoint = ""
    t.done()
    return TelemetryConfig(endpoint, service)


def check_local_dir(path: str) -> str:
    """Why the daemon could not write call recordings under ``path``, or ``""``.

    Nothing is created here (``patterd check`` has no side effects): a missing directory is
    made at the first call, so its nearest existing ancestor must be a writable directory.
    """
    target = Path(path).expanduser()
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        if probe == target:
            return f"expected a directory, {path!r} is a file"
        return f"cannot create {path!r}: {str(probe)!r} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "write to" if probe == target else f"create {path!r} in"
        return f"cannot {what} {str(probe)!r} (permission denied or read-only)"
    return ""


def _one_per_env_path(problems: list[str]) -> list[str]:
    """Where a key's ``${VAR}`` is unset, that is the problem to report for the key."""
    env_paths = {p.split(": ", 1)[0] for p in problems if ": environment variable " in p}
    return [p for p in problems
            if ": environment variable " in p or p.split(": ", 1)[0] not in env_paths]


def _read_server(s: Section) -> ServerConfig:
    public_url = s.str("public_url").rstrip("/")
    if not public_url:
        s.problem("public_url", "required (the https:// base URL the carrier reaches, "
                                "e.g. https://voice.example.com)")
    else:
        problem = check_public_url(public_url)
        if problem:
            s.problem("public_url", problem)
    cfg = ServerConfig(
        public_url=public_url,
        host=s.str("host", "0.0.0.0"),
        port=s.int("port", 8000, minimum=0, maximum=65535),
        max_calls=s.int("max_calls", 500, minimum=1),
        drain_timeout=s.float("drain_timeout", 600.0, minimum=0),
        max_body_bytes=s.int("max_body_bytes", 65536, minimum=1024, maximum=16 * 1024 * 1024),
        body_timeout=s.float("body_timeout", 10.0, minimum=0.1, maximum=300),
        media_start_timeout=s.float("media_start_timeout", 10.0, minimum=0.1, maximum=300),
        idle_timeout=s.float("idle_timeout", 15.0, minimum=0.1, maximum=3600),
        max_connections=s.int("max_connections", 4096, minimum=16),
        max_connections_per_ip=s.int("max_connections_per_ip", 1024, minimum=1),
        handoff=s.bool("handoff", True),
        handoff_delay=s.float("handoff_delay", 2.0, minimum=0, maximum=60),
    )
    if cfg.max_connections_per_ip > cfg.max_connections:
        s.problem("max_connections_per_ip", "expected at most server.max_connections "
                                            f"({cfg.max_connections})")
    s.done()
    return cfg


def check_public_url(url: str) -> str:
    """Why ``url`` cannot be the public base URL, or ``""``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"expected an http(s):// URL, got {mask_url(url)!r} ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http(s):// URL with a host, got {mask_url(url)!r}"
    if parts.query or parts.fragment:
        return f"expected a base URL without query or fragment, got {mask_url(url)!r}"
    return ""


_TWILIO_KEYS = ("account_sid", "auth_token", "configure_number", "api_base_url", "signing_keys")
SIGNING_KEY_ID = re.compile(r"[A-Za-z0-9_\-]{1,100}")
_TELNYX_KEYS = ("api_key", "connection_id", "public_key", "api_base_url", "require_signature")


def read_carrier(c: Section, env: Mapping[str, str]) -> CarrierSettings:
    """The ``carrier:`` section, credentials falling back to the environment."""
    provider = c.str("provider", "twilio", choices=("twilio", "telnyx"))
    carrier: CarrierSettings
    if provider == "telnyx":
        carrier = telnyx_settings(
            api_key=c.str("api_key"), connection_id=c.str("connection_id"),
            public_key=c.str("public_key"),
            api_base_url=c.str("api_base_url", "https://api.telnyx.com/v2"),
            require_signature=c.bool("require_signature", True), env=env,
            problems=c.problems, path=c.path)
        wrong = {k: "a twilio setting; this carrier is telnyx"
                 for k in _TWILIO_KEYS if k not in _TELNYX_KEYS}
    else:
        carrier = twilio_settings(
            account_sid=c.str("account_sid"), auth_token=c.str("auth_token"),
            configure_number=c.bool("configure_number", True),
            api_base_url=c.str("api_base_url", "https://api.twilio.com"),
            signing_keys=c.str_map("signing_keys", expected="a signing key's secret"), env=env,
            problems=c.problems, path=c.path)
        wrong = {k: "a telnyx setting; this carrier is twilio"
                 for k in _TELNYX_KEYS if k not in _TWILIO_KEYS}
    c.done(not_here=wrong)
    return carrier


def twilio_settings(*, account_sid: str = "", auth_token: str = "",
                    configure_number: bool = True, api_base_url: str = "https://api.twilio.com",
                    signing_keys: Mapping[str, str] | None = None,
                    env: Mapping[str, str] | None = None, problems: list[str] | None = None,
                    path: str = "carrier", check_format: bool = True) -> TwilioSettings:
    """Twilio settings with the environment fallback; problems are appended to ``problems``
    (raised as :class:`ConfigError` without it). ``check_format=False`` checks only that the
    credentials are there (a ``Twilio(...)`` object; :func:`carrier_problems` at serve).

    ``signing_keys`` (SharedKey id → secret, several during a rotation) fall back to
    ``TWILIO_SIGNING_KEYS``: ``id=secret`` pairs separated by commas."""
    env = environ() if env is None else env
    out: list[str] = [] if problems is None else problems
    keys = dict(signing_keys or {})
    if not keys and env.get("TWILIO_SIGNING_KEYS", "").strip():
        keys = _signing_keys_from_env(env["TWILIO_SIGNING_KEYS"], f"{path}.signing_keys", out)
    for key_id, secret in keys.items():
        if not SIGNING_KEY_ID.fullmatch(key_id):
            out.append(f"{path}.signing_keys: {key_id[:40]!r} is not a signing key id "
                       "(letters, digits, _ and -, as Twilio shows it)")
        elif not secret:
            out.append(f"{path}.signing_keys.{key_id}: the secret is empty")
        elif credential_problem(secret):
            out.append(f"{path}.signing_keys.{key_id}: the secret {credential_problem(secret)}")
    sid = account_sid or env.get("TWILIO_ACCOUNT_SID", "")
    token = auth_token or env.get("TWILIO_AUTH_TOKEN", "")
    if not sid:
        out.append(f"{path}.account_sid: required (or set TWILIO_ACCOUNT_SID)")
    elif check_format and not TWILIO_SID.fullmatch(sid):
        out.append(f"{path}.account_sid: expected AC followed by 32 hex digits, "
                   f"got {sid[:6]!r}… ({len(sid)} characters)")
    if not token:
        out.append(f"{path}.auth_token: required (or set TWILIO_AUTH_TOKEN)")
    elif credential_problem(token):
        out.append(f"{path}.auth_token: {credential_problem(token)}")
    if check_format:
        _check_api_url(api_base_url, f"{path}.api_base_url", out)
    if problems is None and out:
        raise ConfigError(out)
    return TwilioSettings(sid, token, configure_number, api_base_url.rstrip("/"),
                          MappingProxyType(keys))


def _signing_keys_from_env(text: str, path: str, out: list[str]) -> dict[str, str]:
    """``id=secret,id2=secret2`` (``TWILIO_SIGNING_KEYS``)."""
    keys: dict[str, str] = {}
    for n, pair in enumerate(text.split(","), 1):
        key_id, sep, secret = pair.strip().partition("=")
        if not sep:
            out.append(f"{path}: TWILIO_SIGNING_KEYS entry {n}: expected id=secret "
                       "(pairs separated by commas)")
            continue
        keys[key_id.strip()] = secret.strip()
    return keys


def telnyx_settings(*, api_key: str = "", connection_id: str = "", public_key: str = "",
                    api_base_url: str = "https://api.telnyx.com/v2",
                    require_signature: bool = True, env: Mapping[str, str] | None = None,
                    problems: list[str] | None = None, path: str = "carrier",
                    check_format: bool = True) -> TelnyxSettings:
    """Telnyx settings with the environment fallback; the public key is checked by decoding it
    (with ``check_format``; see :func:`twilio_settings`)."""
    from ..carriers.telnyx.signature import KeyFormatError, load_public_key

    env = environ() if env is None else env
    out: list[str] = [] if problems is None else problems
    key = api_key or env.get("TELNYX_API_KEY", "")
    conn = connection_id or env.get("TELNYX_CONNECTION_ID", "")
    pub = public_key or env.get("TELNYX_PUBLIC_KEY", "")
    if not key:
        out.append(f"{path}.api_key: required (or set TELNYX_API_KEY)")
    elif credential_problem(key):
        out.append(f"{path}.api_key: {credential_problem(key)}")
    if require_signature and not pub:
        out.append(f"{path}.public_key: required (or set TELNYX_PUBLIC_KEY): the base64 "
                   "Ed25519 key from the Telnyx portal, used to verify webhooks")
    elif pub and check_format:
        try:
            load_public_key(pub)
        except KeyFormatError as exc:
            out.append(f"{path}.public_key: {exc}")
    if check_format:
        _check_api_url(api_base_url, f"{path}.api_base_url", out)
    if problems is None and out:
        raise ConfigError(out)
    return TelnyxSettings(key, conn, pub, api_base_url.rstrip("/"), require_signature)


def carrier_problems(settings: CarrierSettings, path: str = "carrier") -> list[str]:
    """What is wrong with carrier settings built without the format checks (a malformed
    account SID or public key, a bad API URL), as ``key.path: problem`` lines."""
    out: list[str] = []
    if isinstance(settings, TwilioSettings):
        twilio_settings(account_sid=settings.account_sid, auth_token=settings.auth_token,
                        configure_number=settings.configure_number,
                        api_base_url=settings.api_base_url, env={}, problems=out, path=path)
    else:
        telnyx_settings(api_key=settings.api_key, connection_id=settings.connection_id,
                        public_key=settings.public_key, api_base_url=settings.api_base_url,
                        require_signature=settings.require_signature, env={}, problems=out,
                        path=path)
    return out


def _check_api_url(url: str, path: str, out: list[str]) -> None:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        out.append(f"{path}: expected an http(s):// URL, got {mask_url(url)!r}")


def _read_agent(a: Section) -> AgentConfig:
    targets = a.str_map("transfer_targets", expected="an E.164 number or a sip: URI")
    for name, target in targets.items():
        if not is_dial_target(target):
            given = (a.raw.get("transfer_targets") or {}).get(name)
            a.problems.append(f"{a.key_path('transfer_targets')}.{name}: expected an E.164 "
                              f"number or a sip: URI, got {target!r}"
                              + unquoted_number_hint(given))
    cfg = AgentConfig(
        first_message=a.str("first_message", "Thanks for calling."),
        system_prompt=a.str("system_prompt", DEFAULT_SYSTEM_PROMPT),
        language=a.str("language", "en-US", pattern=re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*"),
                       expected="a language tag like en-US"),
        voicemail_message=a.str("voicemail_message"),
        machine_detection=a.bool("machine_detection", False),
        transfer_targets=MappingProxyType(targets),
        max_call_seconds=a.float("max_call_seconds", 3600.0, minimum=1),
        barge_in=a.bool("barge_in", True),
        silence_timeout=a.float("silence_timeout", 30.0, minimum=1),
        variables=MappingProxyType(a.str_map("variables")),
    )
    a.done()
    return cfg
