"""``Agent``: what ``phone.agent(...)`` returns — the ``agent``, ``stt``, ``llm``, ``tts`` and
``vad`` sections of the configuration, validated exactly as the YAML file's are.

Its keyword arguments are Patter's (``system_prompt``, ``first_message``, ``voice``,
``language``, ``stt``, ``llm``, ``tts``, ``tools``, ``variables``, …) and the ``agent:``
section's; :func:`agent_sections` turns them into the YAML shape (``docs/configuration.md``)
so that one model serves both front doors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .config import AgentConfig, BackendConfig, Config
from .migration import AGENT, refuse

LAYERS = ("stt", "llm", "tts", "vad")
AGENT_KEYS = tuple(f.name for f in fields(AgentConfig))


@dataclass(frozen=True, slots=True)
class Agent:
    """A voice agent: what it says and does (``agent``), and the providers it hears, thinks
    and speaks with. Build it with :meth:`patterd.Patter.agent`; give it to
    :meth:`~patterd.Patter.serve`."""

    agent: AgentConfig
    stt: BackendConfig
    llm: BackendConfig
    tts: BackendConfig
    vad: BackendConfig

    @classmethod
    def of(cls, config: Config) -> Agent:
        """The agent a configuration describes."""
        return cls(config.agent, config.stt, config.llm, config.tts, config.vad)

    def applied_to(self, config: Config) -> Config:
        """``config`` with this agent's sections."""
        return replace(config, agent=self.agent, stt=self.stt, llm=self.llm, tts=self.tts,
                       vad=self.vad)

    @property
    def system_prompt(self) -> str:
        """The language model's instructions."""
        return self.agent.system_prompt

    @property
    def first_message(self) -> str:
        """What the agent says when the call is answered."""
        return self.agent.first_message

    @property
    def language(self) -> str:
        """The agent's language tag (e.g. ``en-US``)."""
        return self.agent.language

    @property
    def voice(self) -> str:
        """The text-to-speech voice (``""``: the provider's default)."""
        return self.tts.voice

    @property
    def variables(self) -> Mapping[str, str]:
        """``{name}`` placeholders filled in every message and prompt."""
        return self.agent.variables


def agent_sections(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The raw ``agent``/``stt``/``llm``/``tts``/``vad`` sections (YAML shape) of ``base`` with
    the arguments of ``phone.agent(...)`` applied. Raises ``TypeError`` for an argument of the
    wrong kind or one that has no meaning here."""
    args = {k: v for k, v in given.items() if v is not None}
    if args.get("barge_in_threshold_ms") == 0:      # Patter's way of turning barge-in off
        del args["barge_in_threshold_ms"]
        args.setdefault("barge_in", False)
    known = (*AGENT_KEYS, *LAYERS, "voice", "model", "tools", "rules", "fallback")
    refuse("phone.agent()", {k: v for k, v in args.items() if k not in known}, AGENT, known)
    out = {"agent": dict(base.get("agent") or {})}
    for layer in LAYERS:
        out[layer] = section(layer, args[layer]) if layer in args \
            else dict(base.get(layer) or {})
    for key in AGENT_KEYS:
        if key in args:
            out["agent"][key] = dict(args[key]) if isinstance(args[key], Mapping) else args[key]
    if "voice" in args:
        out["tts"]["voice"] = args["voice"]
    if "model" in args:
        out["llm"]["model"] = args["model"]
    for key in ("rules", "fallback"):
        if key in args:
            out["llm"][key] = args[key]
    if "tools" in args:
        if not isinstance(args["tools"], (list, tuple)):
            raise TypeError(f"phone.agent(): tools= expected a list, got "
                            f"{type(args['tools']).__name__}")
        out["llm"]["tools"] = [tool(item, i) for i, item in enumerate(args["tools"])]
    return out


def section(layer: str, value: Any) -> dict[str, Any]:
    """A provider layer given as a name (``"deepgram"``) or as its section (a mapping)."""
    if isinstance(value, str):
        return {"provider": value}
    if isinstance(value, Mapping):
        return dict(value)
    example = {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs", "vad": "silero"}[layer]
    raise TypeError(f"{layer}= expected a provider name like {example!r} or its settings like "
                    f"{{'provider': {example!r}, 'model': …}} (the {layer} section of "
                    f"docs/configuration.md), got {type(value).__name__}")


def tool(item: Any, index: int) -> dict[str, Any]:
    """One of ``tools=``: a mapping in the ``llm.tools`` shape, or a Patter ``Tool`` served
    over HTTPS (its ``webhook_url``)."""
    if isinstance(item, Mapping):
        return dict(item)
    name = getattr(item, "name", None)
    if isinstance(name, str) and hasattr(item, "webhook_url"):
        url = getattr(item, "webhook_url", "") or ""
        if not url:
            raise TypeError(f"tools[{index}] ({name!r}): an in-process handler cannot run "
                            "here: patterd calls tools over HTTPS. Serve it at a URL and give "
                            "{'name': …, 'description': …, 'url': 'https://…'}")
        out: dict[str, Any] = {"name": name, "description": getattr(item, "description", ""),
                               "url": url}
        if getattr(item, "parameters", None):
            out["parameters"] = dict(item.parameters)
        return out
    raise TypeError(f"tools[{index}]: expected a mapping like {{'name': …, 'description': …, "
                    f"'url': 'https://…'}}, got {type(item).__name__}")


__all__ = ["AGENT_KEYS", "Agent", "LAYERS", "agent_sections", "section"]
