"""The typed, frozen configuration objects. Nothing else in patterd reads raw YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

EMPTY: Mapping[str, Any] = MappingProxyType({})
SECRET_OPTION_NAMES = frozenset({"secret", "auth_token"})   # provider options that are secrets
DEFAULT_SYSTEM_PROMPT = "You are a helpful phone assistant. Keep answers short."


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``server:`` — where the daemon listens and how the carrier reaches it."""

    public_url: str
    host: str = "0.0.0.0"
    port: int = 8000
    max_calls: int = 500
    drain_timeout: float = 600.0
    max_body_bytes: int = 65536
    body_timeout: float = 10.0
    media_start_timeout: float = 10.0
    idle_timeout: float = 15.0
    max_connections: int = 4096
    max_connections_per_ip: int = 1024
    handoff: bool = True          # on drain, move live calls to a ready replica (PostgreSQL)
    handoff_delay: float = 2.0    # seconds for the load balancer to see /readyz 503 first


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """``carrier:`` with ``provider: twilio``; credentials already resolved from the environment."""

    account_sid: str
    auth_token: str = field(repr=False)   # a secret: never in a repr (logs, tracebacks)
    configure_number: bool = True
    api_base_url: str = "https://api.twilio.com"
    signing_keys: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # SharedKey id → secret
    provider: Literal["twilio"] = "twilio"


@dataclass(frozen=True, slots=True)
class TelnyxSettings:
    """``carrier:`` with ``provider: telnyx``; credentials already resolved from the environment."""

    api_key: str = field(repr=False)
    connection_id: str = ""
    public_key: str = ""
    api_base_url: str = "https://api.telnyx.com/v2"
    require_signature: bool = True
    provider: Literal["telnyx"] = "telnyx"


CarrierSettings = TwilioSettings | TelnyxSettings


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``agent:`` — what the voice agent says and may do."""

    first_message: str = "Thanks for calling."
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    language: str = "en-US"
    voicemail_message: str = ""
    machine_detection: bool = False
    transfer_targets: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    max_call_seconds: float = 3600.0
    barge_in: bool = True
    silence_timeout: float = 30.0
    variables: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class RuleAction:
    """What a matching rule does besides replying."""

    kind: Literal["transfer", "hangup", "send_dtmf"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the offline ``rules`` agent."""

    phrases: tuple[str, ...] = ()
    dtmf: str = ""
    reply: str = ""
    action: RuleAction | None = None


# The rules agent when the file (or phone.agent()) gives it no rules: a caller can still say
# goodbye, and anything else is told why nothing happens.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(("goodbye", "bye"), "", "Goodbye!", RuleAction("hangup")),)
NO_RULES_FALLBACK = "This agent has no rules yet, so it can only say goodbye. Say goodbye to hang up."


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """One of ``llm.tools``: a function the model may call, served by the user's HTTPS endpoint.

    The gateway POSTs ``{"name", "arguments", "call"}`` to ``url`` (signed with
    ``X-Patterd-Signature`` when ``secret`` is set) and gives the model the response body.
    """

    name: str
    description: str
    url: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"type": "object", "properties": {}}))
    timeout: float = 5.0
    retries: int = 1
    max_response_bytes: int = 65536
    allow_private: bool = False
    secret: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, repr=False)
class BackendConfig:
    """``stt:``, ``llm:``, ``tts:`` or ``vad:`` — one provider and its settings.

    ``api_key`` is already resolved from the provider's usual environment variable. Settings a
    provider has beyond the common ones live in ``options``. ``timeout`` (seconds; 0 = the
    layer's default) bounds connecting and waiting for the first result before the next
    provider of ``failover`` is tried. A streaming LLM's ``inter_token_timeout`` (seconds; 0 =
    the default) bounds the wait between two tokens once the answer has begun, and an LLM's
    ``max_reply_chars`` (0 = the default) cuts an answer that goes on too long. ``tools`` and
    ``max_tool_rounds`` belong to the ``llm`` layer as a whole (not to one provider of it).
    """

    provider: str
    api_key: str = ""
    model: str = ""
    voice: str = ""
    base_url: str = ""
    options: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    rules: tuple[Rule, ...] = ()
    fallback: str = ""
    timeout: float = 0.0
    inter_token_timeout: float = 0.0
    max_reply_chars: int = 0
    failover: tuple["BackendConfig", ...] = ()
    tools: tuple[ToolConfig, ...] = ()
    max_tool_rounds: int = 3

    @property
    def chain(self) -> tuple["BackendConfig", ...]:
        """This provider, then its failover providers, in order."""
        return (self, *self.failover)

    def __repr__(self) -> str:
        # api_key and secret options (the webhook agent's) never show
        shown = {k: ("********" if k in SECRET_OPTION_NAMES and v else v)
                 for k, v in self.options.items()}
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in (
            "provider", "model", "voice", "base_url") if getattr(self, k))
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in (
            "rules", "fallback", "failover", "tools") if getattr(self, k))
        return f"BackendConfig({fields}, options={shown!r}{extra})"


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    """``recording:`` — ``enabled``: the carrier records the call (through its REST API);
    ``local_dir``: the daemon also writes every call to ``<local_dir>/<call id>.wav`` (8 kHz,
    16-bit; ``dual``: caller left, agent right; ``mono``: mixed), whatever ``enabled`` says;
    empty: no local files."""

    enabled: bool = False
    channels: Literal["mono", "dual"] = "dual"
    local_dir: str = ""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``store:`` — where call records live, and for how long (``retention_days`` after a
    call ended; 0 keeps them forever). ``max_pending``: call snapshots waiting for the store
    past which webhooks that would add another call's record are held back (503)."""

    url: str = "sqlite:///./patterd.db"
    retention_days: float = 0.0
    max_pending: int = 10_000


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``admin:`` — the bearer token of the /v1 API; empty means the admin API is off."""

    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``logging:``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """``telemetry:`` — OpenTelemetry traces over OTLP/HTTP: ``otlp_endpoint`` is the base URL
    of a receiver (spans go to ``<otlp_endpoint>/v1/traces``); empty (and no
    ``OTEL_EXPORTER_OTLP_ENDPOINT``): no tracing. Needs the ``otel`` extra."""

    otlp_endpoint: str = ""
    service_name: str = "patterd"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole file, validated."""

    server: ServerConfig
    phone_number: str
    carrier: CarrierSettings
    agent: AgentConfig = field(default_factory=AgentConfig)
    stt: BackendConfig = field(default_factory=lambda: BackendConfig("pocketsphinx"))
    llm: BackendConfig = field(default_factory=lambda: BackendConfig(
        "rules", rules=DEFAULT_RULES, fallback=NO_RULES_FALLBACK))
    tts: BackendConfig = field(default_factory=lambda: BackendConfig("espeak"))
    vad: BackendConfig = field(default_factory=lambda: BackendConfig("silero"))
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pricing: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
