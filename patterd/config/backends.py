"""The ``stt``, ``llm``, ``tts`` and ``vad`` sections: which providers exist and what each takes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .hints import unquoted_number_hint
from .masking import mask_url
from .secrets import credential_problem
from .model import (DEFAULT_RULES, NO_RULES_FALLBACK, SECRET_OPTION_NAMES, AgentConfig,
                    BackendConfig, Rule, RuleAction, ToolConfig)
from .reader import Section

DTMF_DIGITS = re.compile(r"[0-9A-D*#]+")
DTMF_SEND = re.compile(r"[0-9A-D*#wW]{1,32}")
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
SIP_URI = re.compile(r"sips?:[^\s<>\"']+@[^\s<>\"']+")


@dataclass(frozen=True)
class Provider:
    """What one provider of one layer accepts."""

    env_key: str = ""                       # its usual API-key environment variable
    base_url: str = ""                      # default endpoint
    common: frozenset[str] = frozenset()    # which of api_key/model/voice/base_url it takes
    options: Mapping[str, str] = field(default_factory=dict)  # extra key → int|float|str|bool


_CLOUD = frozenset({"api_key", "model", "voice", "base_url", "timeout"})
_STREAMING_LLM = _CLOUD | {"inter_token_timeout", "max_reply_chars"}
TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")

_VAD_OPTIONS = {"threshold": "float", "min_silence": "float", "min_speech": "float",
                "turn_model": "turn_model", "turn_silence": "float",
                "turn_max_silence": "float", "turn_threshold": "float",
                "turn_cpu_share": "float"}
TURN_MODEL_DEFAULT = "smart-turn-v3"   # the Smart Turn v3.2 file in the pipecat-ai wheel
TURN_MODEL_OFF = "none"

PROVIDERS: dict[str, dict[str, Provider]] = {
    "stt": {
        "pocketsphinx": Provider(options={"vocabulary": "list"}),
        "deepgram": Provider("DEEPGRAM_API_KEY", "wss://api.deepgram.com/v1", _CLOUD,
                             {"language": "str", "endpointing": "int",
                              "utterance_end_ms": "int"}),
        "openai": Provider("OPENAI_API_KEY", "https://api.openai.com/v1", _CLOUD,
                           {"language": "str"}),
    },
    "llm": {
        "rules": Provider(),
        "openai": Provider("OPENAI_API_KEY", "https://api.openai.com/v1", _STREAMING_LLM,
                           {"temperature": "float", "max_tokens": "int",
                            "include_usage": "bool"}),
        "anthropic": Provider("ANTHROPIC_API_KEY", "https://api.anthropic.com", _STREAMING_LLM,
                              {"temperature": "float", "max_tokens": "int",
                               "auth_token": "str"}),
        "webhook": Provider(common=frozenset({"timeout", "max_reply_chars"}),
                            options={"url": "str", "secret": "str"}),
    },
    "tts": {
        "espeak": Provider(common=frozenset({"voice"}), options={"rate": "int"}),
        "elevenlabs": Provider("ELEVENLABS_API_KEY", "https://api.elevenlabs.io", _CLOUD,
                               {"transport": "str", "language": "str",
                                "chunk_length_schedule": "list"}),
        "openai": Provider("OPENAI_API_KEY", "https://api.openai.com/v1", _CLOUD),
        "deepgram": Provider("DEEPGRAM_API_KEY", "https://api.deepgram.com/v1", _CLOUD),
        "cartesia": Provider("CARTESIA_API_KEY", "https://api.cartesia.ai", _CLOUD,
                             {"language": "str", "version": "str", "transport": "str",
                              "max_buffer_delay_ms": "int"}),
    },
    "vad": {
        "silero": Provider(options=_VAD_OPTIONS),
        "energy": Provider(options=_VAD_OPTIONS),
    },
}

DEFAULT_PROVIDER = {"stt": "pocketsphinx", "llm": "rules", "tts": "espeak", "vad": "silero"}
SECRET_OPTIONS = SECRET_OPTION_NAMES
AUTH_TOKEN_ENV = {"anthropic": "ANTHROPIC_AUTH_TOKEN"}
"""Providers that also take a bearer token (``auth_token``) instead of an API key."""


def read_backend(root: Section, layer: str, agent: AgentConfig,
                 env: Mapping[str, str]) -> BackendConfig:
    """Read one backend section (and its ``failover`` providers), checking each one's keys
    against the provider it names."""
    return _read_provider(root.section(layer), layer, agent, env, top=True)


def _read_provider(sec: Section, layer: str, agent: AgentConfig, env: Mapping[str, str], *,
                   top: bool) -> BackendConfig:
    table = PROVIDERS[layer]
    name = sec.str("provider", DEFAULT_PROVIDER[layer], choices=table)
    spec = table.get(name) or table[DEFAULT_PROVIDER[layer]]
    values: dict[str, Any] = {}
    for key in ("api_key", "model", "voice", "base_url"):
        if key in spec.common:
            values[key] = sec.str(key)
    if "timeout" in spec.common:
        values["timeout"] = sec.float("timeout", 0.0, minimum=0.0, maximum=120.0)
    if "inter_token_timeout" in spec.common:
        values["inter_token_timeout"] = sec.float("inter_token_timeout", 0.0, minimum=0.0,
                                                  maximum=120.0)
    if "max_reply_chars" in spec.common:
        values["max_reply_chars"] = sec.int("max_reply_chars", 0, minimum=0, maximum=100_000)
    token = ""
    if name in AUTH_TOKEN_ENV:   # a bearer token may stand in for the API key
        token = (sec.str("auth_token") if sec.has("auth_token") else "") or env.get(
            AUTH_TOKEN_ENV[name], "")
    if "api_key" in spec.common and not values["api_key"]:
        values["api_key"] = env.get(spec.env_key, "")
        if not values["api_key"] and not values.get("base_url") and not token:
            sec.problem("api_key", f"required for {name} (or set {spec.env_key}, "
                                   "or a base_url for a server that needs no key)")
    if values.get("api_key") and credential_problem(values["api_key"]):
        sec.problem("api_key", credential_problem(values["api_key"]))
    if "base_url" in spec.common:
        url = values.get("base_url") or spec.base_url
        if not re.fullmatch(r"(https?|wss?)://[^\s/]+(/\S*)?", url):
            sec.problem("base_url", "expected an http(s):// or ws(s):// URL, "
                                    f"got {mask_url(url)!r}")
        values["base_url"] = url.rstrip("/")
    options: dict[str, Any] = {}
    for key, kind in spec.options.items():
        if not sec.has(key):
            sec.known.add(key)
            continue
        if kind == "int":
            options[key] = sec.int(key, 0, minimum=0)
        elif kind == "float":
            options[key] = sec.float(key, 0.0, minimum=0.0)
        elif kind == "bool":
            options[key] = sec.bool(key, False)
        elif kind == "list":
            options[key] = tuple(str(v) for v in sec.list(key))
        elif kind == "turn_model":
            options[key] = _read_turn_model(sec, key)
        else:
            options[key] = sec.str(key)
    if token and name in AUTH_TOKEN_ENV:
        options["auth_token"] = token
    if layer == "vad":
        options = _check_vad(sec, options)
    if name in ("elevenlabs", "cartesia") and options.get("transport", "websocket") not in (
            "http", "websocket"):
        sec.problem("transport", "expected http or websocket, got "
                                 f"{options.get('transport')!r}")
    schedule = options.get("chunk_length_schedule")
    if schedule is not None and (not schedule or not all(
            s.isdigit() and 50 <= int(s) <= 500 for s in schedule)):
        sec.problem("chunk_length_schedule", "expected a list of character counts, each "
                                             "from 50 to 500")
    if name == "webhook" and not options.get("url"):
        sec.problem("url", "required for the webhook provider (your endpoint's https:// URL)")
    if name == "webhook" and not options.get("secret"):
        sec.problem("secret", "required for the webhook provider: requests are signed with it "
                              "(X-Patterd-Signature) so your endpoint can trust them")
    elif options.get("secret") and credential_problem(str(options["secret"])):
        sec.problem("secret", credential_problem(str(options["secret"])))
    rules: tuple[Rule, ...] = ()
    fallback = ""
    if name == "rules":
        if sec.has("rules"):
            rules = tuple(_read_rules(sec, agent))
            fallback = sec.str("fallback", "Sorry, I didn't catch that.")
        else:   # no rules given (not even []): a goodbye, and a fallback that says so
            sec.known.add("rules")
            rules = DEFAULT_RULES
            fallback = sec.str("fallback", NO_RULES_FALLBACK)
    if top and layer != "vad":
        failover = []
        for i, raw in enumerate(sec.list("failover")):
            item = Section(raw, f"{sec.key_path('failover')}[{i}]", sec.problems)
            failover.append(_read_provider(item, layer, agent, env, top=False))
        values["failover"] = tuple(failover)
    if top and layer == "llm":
        values["tools"] = tuple(_read_tools(sec))
        values["max_tool_rounds"] = sec.int("max_tool_rounds", 3, minimum=1, maximum=10)
    not_here = _elsewhere(layer, name)
    if not top:
        for key in ("failover", "tools", "max_tool_rounds"):
            not_here[key] = f"belongs to the {layer} section itself, not to a failover provider"
    sec.done(not_here=not_here)
    return BackendConfig(provider=name, options=MappingProxyType(options), rules=rules,
                         fallback=fallback, **values)


def _read_turn_model(sec: Section, key: str) -> str:
    """``vad.turn_model``: ``smart-turn-v3`` (the bundled model), false/none (off), or the
    path of a Smart Turn v3 ``.onnx`` file."""
    raw = sec.raw.get(key)
    if raw is False:
        sec.known.add(key)
        return TURN_MODEL_OFF
    if raw is True:
        sec.known.add(key)
        return TURN_MODEL_DEFAULT
    value = sec.str(key, TURN_MODEL_DEFAULT, expected="smart-turn-v3, false, or an .onnx path")
    if value.strip().lower() in ("none", "off", "false", "no"):
        return TURN_MODEL_OFF
    if value != TURN_MODEL_DEFAULT and not (value.endswith(".onnx") and os.path.isfile(value)):
        sec.problem(key, f"expected smart-turn-v3, false, or the path of an .onnx file that "
                         f"exists, got {value!r}")
        return TURN_MODEL_DEFAULT
    return value


VAD_DEFAULTS = {"threshold": 0.5, "min_speech": 0.1, "min_silence": 0.5,
                "turn_model": TURN_MODEL_DEFAULT, "turn_silence": 0.2, "turn_max_silence": 1.3,
                "turn_threshold": 0.5, "turn_cpu_share": 0.5}
_VAD_BOUNDS = {"threshold": (0.01, 1.0), "min_speech": (0.02, 5.0), "min_silence": (0.05, 10.0),
               "turn_silence": (0.05, 5.0), "turn_max_silence": (0.1, 10.0),
               "turn_threshold": (0.0, 1.0), "turn_cpu_share": (0.05, 1.0)}


def _check_vad(sec: Section, options: dict[str, Any]) -> dict[str, Any]:
    """Every ``vad`` setting with its default, each in its range, and the silence bounds in
    order (turn_silence < min_silence <= turn_max_silence while the turn model is on)."""
    out = {**VAD_DEFAULTS, **options}
    for key, (low, high) in _VAD_BOUNDS.items():
        if not low <= out[key] <= high:
            sec.problem(key, f"expected {low} to {high}, got {out[key]}")
            out[key] = VAD_DEFAULTS[key]
    if out["turn_model"] != TURN_MODEL_OFF and not (
            out["turn_silence"] < out["min_silence"] <= out["turn_max_silence"]):
        sec.problem("turn_silence", "the silence bounds must be in order: turn_silence "
                    f"({out['turn_silence']}) < min_silence ({out['min_silence']}) <= "
                    f"turn_max_silence ({out['turn_max_silence']}), or turn_model: false")
    return out


def _read_tools(sec: Section) -> list[ToolConfig]:
    tools: list[ToolConfig] = []
    seen: set[str] = set()
    from ..backends.llm.base import TOOL_NAMES
    for i, raw in enumerate(sec.list("tools")):
        t = Section(raw, f"{sec.key_path('tools')}[{i}]", sec.problems)
        name = t.str("name", pattern=TOOL_NAME,
                     expected="a function name (letters, digits, _ and -, at most 64)")
        if not name:
            t.problem("name", "required")
        elif name in TOOL_NAMES or name in seen:
            t.problem("name", f"{name!r} is already taken (built-in tools: "
                              f"{', '.join(TOOL_NAMES)})")
        seen.add(name)
        description = t.str("description")
        if not description:
            t.problem("description", "required: the model decides from it when to call the tool")
        url = t.str("url")
        allow_private = t.bool("allow_private", False)
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            t.problem("url", "expected the https:// URL of your endpoint, "
                             f"got {mask_url(url)!r}")
        elif url.startswith("http://") and not allow_private:
            t.problem("url", "expected https:// (plain http:// only with allow_private: true, "
                             "for endpoints on your own network)")
        params_raw = t._get("parameters")
        parameters: Mapping[str, Any] = MappingProxyType({"type": "object", "properties": {}})
        if params_raw is not None:
            if not isinstance(params_raw, dict) or params_raw.get("type", "object") != "object":
                t.problem("parameters", "expected a JSON Schema object "
                                        "({type: object, properties: {...}})")
            else:
                parameters = MappingProxyType({"type": "object", **params_raw})
        tool = ToolConfig(
            name=name, description=description, url=url, parameters=parameters,
            timeout=t.float("timeout", 5.0, minimum=0.1, maximum=60.0),
            retries=t.int("retries", 1, minimum=0, maximum=5),
            max_response_bytes=t.int("max_response_bytes", 65536, minimum=1,
                                     maximum=10 * 1024 * 1024),
            allow_private=allow_private, secret=t.str("secret"))
        if tool.secret and credential_problem(tool.secret):
            t.problem("secret", credential_problem(tool.secret))
        t.done()
        tools.append(tool)
    return tools


def _elsewhere(layer: str, chosen: str) -> dict[str, str]:
    """Keys other providers of this layer take, to explain why they are refused here."""
    out: dict[str, str] = {}
    for other, spec in PROVIDERS[layer].items():
        if other == chosen:
            continue
        for key in list(spec.common) + list(spec.options) + (
                ["rules", "fallback"] if other == "rules" else []):
            out.setdefault(key, f"not a setting of {layer} provider {chosen!r} "
                                f"(it belongs to {other!r})")
    return out


def _read_rules(sec: Section, agent: AgentConfig) -> list[Rule]:
    rules: list[Rule] = []
    raw_rules = sec.list("rules")
    for i, raw in enumerate(raw_rules):
        r = Section(raw, f"{sec.key_path('rules')}[{i}]", sec.problems)
        phrases_raw = r._get("phrases")
        phrases: list[str] = []
        if isinstance(phrases_raw, str):
            phrases_raw = [phrases_raw]
        if phrases_raw is not None:
            if not isinstance(phrases_raw, list):
                r.problem("phrases", "expected a list of phrases")
            else:
                for j, p in enumerate(phrases_raw):
                    if not isinstance(p, str) or not p.strip():
                        sec.problems.append(f"{r.key_path('phrases')}[{j}]: "
                                            "expected a non-empty phrase")
                    else:
                        phrases.append(" ".join(p.lower().split()))
        dtmf = r.str("dtmf", pattern=DTMF_DIGITS, expected="digits 0-9, *, #, A-D")
        reply = r.str("reply")
        action = _read_action(r, agent)
        if not phrases and not dtmf:
            sec.problems.append(f"{r.path}: a rule needs phrases or dtmf")
        r.done()
        rules.append(Rule(tuple(phrases), dtmf, reply, action))
    return rules


def _read_action(r: Section, agent: AgentConfig) -> RuleAction | None:
    if not r.has("action"):
        r.known.add("action")
        return None
    a = r.section("action")
    chosen = [k for k in ("transfer", "hangup", "send_dtmf") if a.has(k)]
    action: RuleAction | None = None
    if len(chosen) != 1:
        r.problem("action", "expected exactly one of transfer, hangup, send_dtmf")
        a.known.update(("transfer", "hangup", "send_dtmf"))
    elif chosen[0] == "transfer":
        target = a.str("transfer")
        if target not in agent.transfer_targets and not is_dial_target(target):
            a.problem("transfer", "expected a name from agent.transfer_targets "
                                  f"({', '.join(agent.transfer_targets) or 'none defined'}), "
                                  f"an E.164 number or a sip: URI, got {target!r}"
                                  + unquoted_number_hint(a.raw.get("transfer")))
        action = RuleAction("transfer", target)
    elif chosen[0] == "hangup":
        if a.bool("hangup", True):
            action = RuleAction("hangup")
    else:
        digits = a.str("send_dtmf", pattern=DTMF_SEND,
                       expected="1-32 of 0-9, *, #, A-D, w, W")
        action = RuleAction("send_dtmf", digits)
    a.done()
    return action


def is_dial_target(target: str) -> bool:
    """An E.164 number or a SIP URI."""
    return bool(E164.fullmatch(target) or SIP_URI.fullmatch(target))


__all__ = ["PROVIDERS", "read_backend", "is_dial_target", "E164", "SECRET_OPTIONS"]
