"""A live conversation as data: what a replica hands to the one that takes its call over.

:func:`capture` reads a session at a quiet moment (or with its reply cut, see
:mod:`patterd.call.handoff`) into plain JSON; :func:`restore` puts it into the session of the
stream that resumes the call on another replica. What travels: the LLM history (tool calls
included), the call's variables, keys pressed and not yet answered, the timers (time since
the call's first stream began, since the caller's last activity, whether the caller was
asked "are you still there?"), the usage metered so far and the media seconds (the resuming
replica prices the whole call), and the words to say again (a reply cut by the move).
The transcript and events are not in it: each replica wrote its lines to its own part of the
stored record as they happened, and the store merges the parts into one record.
"""

from __future__ import annotations

import time
from typing import Any

from ..backends.llm.base import Message, ToolCall
from ..ops.cost import Usage
from .records import usage_dict

VERSION = 1


def message_dict(message: Message) -> dict[str, Any]:
    """One history entry as JSON."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"name": c.name, "arguments": dict(c.arguments), "id": c.id}
                             for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


def message_of(data: dict[str, Any]) -> Message:
    """A history entry back from :func:`message_dict` (raises on a malformed one)."""
    calls = tuple(ToolCall(str(c["name"]), dict(c.get("arguments") or {}), str(c.get("id", "")))
                  for c in data.get("tool_calls") or ())
    role = str(data["role"])
    if role not in ("system", "user", "assistant", "tool"):
        raise ValueError(f"history role {role!r}")
    return Message(role, str(data.get("content", "")), calls,   # type: ignore[arg-type]
                   str(data.get("tool_call_id", "")), str(data.get("name", "")))


def capture(session: Any, *, resume_text: str = "") -> dict[str, Any]:
    """The session's conversation as JSON (see the module docstring)."""
    session.refresh_meter()      # the usage of this stream up to now, not the last line's
    now = session.loop.time()
    usage, media_seconds = session.record.metered()
    return {
        "v": VERSION,
        "history": [message_dict(m) for m in session.history],
        "variables": dict(session.variables),
        "keys": session.keypad.pending,
        "reprompted": session.reprompted,
        "elapsed": round(now - session.call_started, 3),
        "idle": round(max(0.0, now - session.last_activity), 3),
        "usage": usage_dict(usage),
        "media_seconds": round(media_seconds, 3),
        "resume_text": resume_text,
        "moved_at": time.time(),
    }


def restore(session: Any, state: dict[str, Any]) -> None:
    """Put ``state`` into ``session`` (a fresh, resumed one). Raises ``ValueError`` (or
    ``KeyError``/``TypeError``) on a state it cannot read; then nothing was changed."""
    if state.get("v") != VERSION:
        raise ValueError(f"hand-off state version {state.get('v')!r}, expected {VERSION}")
    history = [message_of(m) for m in state["history"]]
    variables = {str(k): str(v) for k, v in dict(state.get("variables") or {}).items()}
    usage = Usage(**state["usage"])
    now = session.loop.time()
    session.history[:] = history
    session.variables.clear()
    session.variables.update(variables)
    session.reprompted = bool(state.get("reprompted"))
    session.call_started = now - float(state.get("elapsed", 0.0))
    session.last_activity = now - float(state.get("idle", 0.0))
    rec = session.record
    rec.usage.add(usage)
    rec.media_seconds += float(state.get("media_seconds", 0.0))
    keys = str(state.get("keys") or "")
    if keys:
        session.keypad.restore(keys)


__all__ = ["VERSION", "capture", "message_dict", "message_of", "restore"]
