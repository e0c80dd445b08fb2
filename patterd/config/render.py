"""The effective configuration as YAML with every secret masked (``patterd check``).

Secrets are the keys of :data:`SECRET_KEYS` (shown as ``********``) and whatever a URL carries:
its password and query parameters named like a key, token, secret or password (``***``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from .backends import PROVIDERS, SECRET_OPTIONS
from .masking import mask_url
from .model import BackendConfig, Config, Rule

SECRET_KEYS = frozenset({"auth_token", "api_key", "token", "secret"}) | SECRET_OPTIONS
SECRET_MAPS = frozenset({"signing_keys"})   # mappings whose every value is a secret


def mask_secret(value: str) -> str:
    """``********`` for a set secret (its length and content stay hidden), ``""`` when unset."""
    return "********" if value else ""


def to_plain(cfg: Config) -> dict[str, Any]:
    """The config as plain dicts/lists in the file's own shape, secrets masked."""
    out = _plain(cfg)
    for layer in ("stt", "llm", "tts", "vad"):
        out[layer] = _backend(layer, getattr(cfg, layer))
    return out


def _backend(layer: str, b: BackendConfig, *, top: bool = True) -> dict[str, Any]:
    spec = PROVIDERS[layer][b.provider]
    out: dict[str, Any] = {"provider": b.provider}
    for key in ("api_key", "model", "voice", "base_url"):
        if key in spec.common:
            out[key] = _plain(getattr(b, key), key)
    for key in ("timeout", "inter_token_timeout", "max_reply_chars"):
        if key in spec.common:
            out[key] = getattr(b, key)
    out.update({k: _plain(v, k) for k, v in b.options.items()})
    if b.provider == "rules":
        out["rules"] = [_rule(r) for r in b.rules]
        out["fallback"] = b.fallback
    if layer == "llm" and top:
        out["tools"] = [_plain(t) for t in b.tools]
        out["max_tool_rounds"] = b.max_tool_rounds
    if b.failover:
        out["failover"] = [_backend(layer, f, top=False) for f in b.failover]
    return out


def _rule(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.phrases:
        out["phrases"] = list(rule.phrases)
    if rule.dtmf:
        out["dtmf"] = rule.dtmf
    out["reply"] = rule.reply
    if rule.action is not None:
        out["action"] = {rule.action.kind: rule.action.value or True}
    return out


def _plain(value: Any, key: str = "") -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in ("rules", "fallback") and not item:
                continue  # only the rules provider has these
            if f.name == "options":
                out.update({k: _plain(v, k) for k, v in item.items()})
                continue
            out[f.name] = _plain(item, f.name)
        return out
    if isinstance(value, Mapping):
        if key in SECRET_MAPS:   # names are not secret, their values are
            return {str(k): mask_secret(str(v)) for k, v in value.items()}
        return {str(k): _plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        if key in SECRET_KEYS:
            return mask_secret(value)
        if "://" in value:   # any URL-valued setting (base_url, public_url, store, tools…)
            return mask_url(value)
    return value


def render(cfg: Config) -> str:
    """YAML text of the effective config."""
    return yaml.safe_dump(to_plain(cfg), sort_keys=False, allow_unicode=True, width=100)
