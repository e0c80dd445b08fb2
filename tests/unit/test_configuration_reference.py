"""docs/configuration.md is kept true: every key the configuration reader asks for is documented
(for each carrier and each provider), nothing documented is a key it does not read, and the
defaults and environment fallbacks it states are the model's."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from patterd.config import build_config
from patterd.config import model
from patterd.config.backends import AUTH_TOKEN_ENV, PROVIDERS
from patterd.config.reader import Section
from patterd.ops.pricing import DEFAULT_PRICES
from tests.support.signing import TWILIO_SID, TelnyxSigner

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PUBLIC_KEY = TelnyxSigner().public_key_b64
LAYER_HEADING = re.compile(r"^### `(stt|llm|tts|vad)` provider `(\w+)`$")
CARRIER_HEADING = re.compile(r"^### `carrier` with `provider: (\w+)`$")
INDEX = re.compile(r"\[\d+\]")


@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    env: str


def documented() -> dict[tuple[str, str], dict[str, Row]]:
    """The doc's table rows by context: ("", "") for full key paths, ("carrier", provider) and
    (layer, provider) for the rows under those headings."""
    out: dict[tuple[str, str], dict[str, Row]] = defaultdict(dict)
    context = ("", "")
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            m = LAYER_HEADING.match(line) or CARRIER_HEADING.match(line)
            if m and m.re is CARRIER_HEADING:
                context = ("carrier", m[1])
            elif m:
                context = (m[1], m[2])
            else:
                context = ("", "")
            continue
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 5, f"a row needs key, type, default, env fallback, meaning: {line}"
        key = cells[0].strip("`")
        assert key not in out[context], f"documented twice: {key} ({context})"
        out[context][key] = Row(key, cells[1], cells[2], cells[3])
    return out


def reader_keys(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                ) -> dict[str, set[str]]:
    """The keys the config reader asks for in each section of ``raw`` (list indices as
    ``[]``), by recording what every Section knows when it is done."""
    seen: dict[str, set[str]] = defaultdict(set)
    done = Section.done

    def record(self: Section, **kwargs: Any) -> None:
        seen[INDEX.sub("[]", self.path)] |= set(self.known)
        done(self, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Section, "done", record)
        build_config(raw, env={})
    return seen


def base(carrier: str = "twilio") -> dict[str, Any]:
    section = ({"provider": "twilio", "account_sid": TWILIO_SID, "auth_token": "t"}
               if carrier == "twilio" else
               {"provider": "telnyx", "api_key": "K", "public_key": PUBLIC_KEY})
    return {"server": {"public_url": "https://voice.example.com"}, "phone_number": "+15550001234",
            "carrier": section, "store": {"url": "sqlite:///:memory:"}}


def provider_section(layer: str, name: str) -> dict[str, Any]:
    section: dict[str, Any] = {"provider": name}
    if "api_key" in PROVIDERS[layer][name].common:
        section["api_key"] = "k"
    if name == "webhook":
        section.update(url="https://x.example.com", secret="s")
    if name == "rules":   # a rule per action, so the reader asks for every action's key
        section["rules"] = [{"phrases": ["a"], "action": {"transfer": "+15550001001"}},
                            {"phrases": ["b"], "action": {"hangup": True}},
                            {"dtmf": "1", "action": {"send_dtmf": "1"}}]
    if layer == "llm":
        section["tools"] = [{"name": "f", "description": "d", "url": "https://t.example.com"}]
    return section


def full_path(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def test_every_key_of_the_reader_is_documented_and_nothing_else(
        monkeypatch: pytest.MonkeyPatch) -> None:
    doc = documented()
    general = doc[("", "")]
    expected_general: set[str] = set()
    for carrier in ("twilio", "telnyx"):
        seen = reader_keys(base(carrier), monkeypatch)
        assert set(doc[("carrier", carrier)]) == {f"carrier.{k}" for k in seen.pop("carrier")}
        for path, keys in seen.items():
            if path.split(".")[0] not in ("stt", "llm", "tts", "vad"):
                expected_general |= {full_path(path, k) for k in keys}
    for layer, table in PROVIDERS.items():
        layer_rows = {k.split(".", 1)[1] for k in general
                      if k.startswith(f"{layer}.") and "[" not in k}
        for name in table:
            seen = reader_keys({**base(), layer: provider_section(layer, name)}, monkeypatch)
            rows = set(doc[(layer, name)])
            assert layer_rows | rows == seen[layer], (layer, name)
            assert not layer_rows & rows, f"{layer}/{name} documents a layer key again"
            for path, keys in seen.items():
                if path.startswith(f"{layer}.") and "failover" not in path:
                    expected_general |= {full_path(path, k) for k in keys}
            expected_general |= {f"{layer}.{k}" for k in layer_rows}
    roots = {k for k in expected_general if "." not in k} | set(reader_keys(
        base(), monkeypatch)[""])
    expected_general |= {f"pricing.{'.'.join(p)}" for p in _leaves(DEFAULT_PRICES)}
    expected_general = {k for k in expected_general if k not in roots or k == "phone_number"}
    assert set(general) == expected_general
    # Every section of the file has its rows.
    every = [*general, *doc[("carrier", "twilio")], *doc[("carrier", "telnyx")]]
    for root in roots:
        assert any(k == root or k.startswith(root + ".") for k in every), root


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, (*prefix, k))]
    return [prefix]


SECTIONS = {"server": model.ServerConfig, "agent": model.AgentConfig,
            "recording": model.RecordingConfig, "store": model.StoreConfig,
            "admin": model.AdminConfig, "logging": model.LoggingConfig,
            "llm.tools[]": model.ToolConfig}


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _stated(cell: str) -> Any:
    assert cell.startswith("`") and cell.endswith("`"), f"a default in backticks: {cell}"
    return yaml.safe_load(cell.strip("`")) if cell != '`""`' else ""


def _same(stated: Any, actual: Any) -> bool:
    if hasattr(actual, "items"):
        return dict(actual) == stated
    return stated == actual


def test_defaults_are_the_models() -> None:
    doc = documented()
    rows = [(("", ""), r) for r in doc[("", "")].values()]
    rows += [(("carrier", p), r) for p in ("twilio", "telnyx") for r in doc[("carrier", p)].values()]
    checked = 0
    for (_, provider), row in rows:
        if row.key.startswith("pricing."):
            value: Any = DEFAULT_PRICES
            for part in row.key.split(".")[1:]:
                value = value[part]
            assert _stated(row.default) == value, row.key
            checked += 1
            continue
        section, _, name = row.key.rpartition(".")
        cls = {"twilio": model.TwilioSettings, "telnyx": model.TelnyxSettings}.get(provider) \
            if section == "carrier" else SECTIONS.get(section)
        if cls is None or row.key == "carrier.provider":   # (the class is the provider)
            continue
        default = _default(cls, name)
        if default is dataclasses.MISSING:
            assert row.default == "required", row.key
        else:
            assert _same(_stated(row.default), default), (row.key, row.default, default)
        checked += 1
    assert checked > 60
    for layer, table in PROVIDERS.items():
        for name, spec in table.items():
            own = doc[(layer, name)]
            if "api_key" in spec.common:
                assert own["api_key"].env == f"`{spec.env_key}`", (layer, name)
            if "base_url" in spec.common:
                assert own["base_url"].default == f"`{spec.base_url}`", (layer, name)
            token_env = AUTH_TOKEN_ENV.get(name)
            if "auth_token" in own:
                assert own["auth_token"].env == f"`{token_env}`", (layer, name)
            assert all(r.env == "—" for k, r in own.items()
                       if k not in ("api_key", "auth_token")), (layer, name)


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_environment_fallbacks_are_the_readers(carrier: str) -> None:
    """Each documented variable fills its key when the file leaves it empty; the keys said to
    have none ignore the environment."""
    doc = documented()
    rows = {**doc[("carrier", carrier)], "admin.token": doc[("", "")]["admin.token"]}
    values = {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TELNYX_PUBLIC_KEY": PUBLIC_KEY,
              "TWILIO_SIGNING_KEYS": "webhooks_sharedkey_1=Zq8vR2xL9pT4mW7nB3cY6dF1"}
    read_as = {"TWILIO_SIGNING_KEYS": {"webhooks_sharedkey_1": "Zq8vR2xL9pT4mW7nB3cY6dF1"}}
    for key, row in rows.items():
        if row.env == "—":
            continue
        var = row.env.strip("`")
        raw = base(carrier)
        section, _, name = key.partition(".")
        raw.setdefault(section, {}).pop(name, None)
        value = values.get(var, f"value-of-{var}-0123456789")
        cfg = build_config(raw, env={var: value})
        obj = cfg.carrier if section == "carrier" else getattr(cfg, section)
        assert getattr(obj, name) == read_as.get(var, value), key
    documented_vars = {r.env.strip("`") for r in rows.values() if r.env != "—"}
    expected = ({"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_SIGNING_KEYS"}
                if carrier == "twilio" else
                {"TELNYX_API_KEY", "TELNYX_CONNECTION_ID", "TELNYX_PUBLIC_KEY"})
    assert documented_vars == expected | {"PATTERD_ADMIN_TOKEN"}
