"""Telnyx Call Control commands beyond answering, simulated for any call: ``speak`` (Telnyx's
TTS speaks to the far end: ``call.speak.started``, then ``call.speak.ended`` once said),
``record_start``/``record_stop`` (``call.recording.saved`` after the hang-up), the
``client_state`` a command carries (echoed on every later event), ``call.cost``, and Telnyx's
checks of ``streaming_start``/``streaming_stop`` (the streams themselves are in ``telnyx.py``)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .results import Line
from .telnyx_wire import now_iso, telnyx_error

if TYPE_CHECKING:
    from .telnyx import TelnyxCall

RATE_PER_MINUTE = 0.002         # a plausible call-control rate, USD
FORMATS, CHANNELS = ("wav", "mp3"), ("single", "dual")
TTS_RATE = 15.0                 # characters per second the carrier's TTS speaks


def check(call: TelnyxCall, action: str, fields: dict[str, Any]) -> web.Response | None:
    """Telnyx's answer to a malformed command, or None."""
    if action == "speak":
        if not isinstance(fields.get("payload"), str) or not fields["payload"]:
            return telnyx_error(422, "10015", "Invalid parameter", "payload is required")
        if len(fields["payload"]) > 3000:
            return telnyx_error(422, "10015", "Invalid parameter",
                                "payload must be at most 3000 characters")
        if not isinstance(fields.get("voice"), str) or not fields["voice"]:
            return telnyx_error(422, "10015", "Invalid parameter", "voice is required")
    if action == "record_start":
        if fields.get("format") not in FORMATS:
            return telnyx_error(422, "10015", "Invalid parameter", "format must be wav or mp3")
        if fields.get("channels") not in CHANNELS:
            return telnyx_error(422, "10015", "Invalid parameter",
                                "channels must be single or dual")
    if action in ("streaming_start", "streaming_stop"):
        problem = _check_streaming(call, action, fields)
        if problem:
            return telnyx_error(422, "10015", "Invalid parameter", problem)
    if action in ("speak", "record_start", "send_dtmf", "transfer", "streaming_start") \
            and call.state not in ("answered", "answering"):
        return telnyx_error(422, "90034", "Call is not answered",
                            f"{action} needs an answered call")
    return None


def _check_streaming(call: TelnyxCall, action: str, fields: dict[str, Any]) -> str:
    if action == "streaming_stop":
        sid = fields.get("stream_id")
        # (⚠️ Telnyx's answer to a stream_id it never streamed is not documented: assumed 422)
        if sid not in (None, "") and sid not in call.result.stream_ids:
            return "stream_id is not a stream of this call"
        return ""
    url = fields.get("stream_url")
    if not isinstance(url, str) or not url:
        return "stream_url is required"
    if not url.startswith(("wss://", "ws://")):
        return "stream_url must be a ws:// or wss:// URL"
    params = fields.get("custom_parameters")
    if params is not None and not (isinstance(params, list) and all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"]
            and isinstance(p.get("value", ""), str) for p in params)):
        return "custom_parameters must be a list of {name, value} strings"
    return ""


def apply(call: TelnyxCall, action: str, fields: dict[str, Any]) -> None:
    """Carry out the side effects of an accepted command."""
    state = fields.get("client_state")
    if isinstance(state, str) and state:
        call.client_state = state           # echoed on every later webhook
    if action == "speak":
        call.spawn(_speak(call, str(fields["payload"])))
    elif action == "record_start":
        call.recordings.append({
            "id": str(uuid.uuid4()), "format": fields["format"], "channels": fields["channels"],
            "started": now_iso(), "ended": None})
    elif action == "record_stop":
        for rec in call.recordings:
            rec["ended"] = rec["ended"] or now_iso()


async def _speak(call: TelnyxCall, text: str) -> None:
    rate = getattr(getattr(call, "callee", None), "tts_rate", TTS_RATE)
    said = getattr(call.result, "said", None)
    if isinstance(said, list):
        said.append(text)
    start = call.caller.now() if call.caller else 0.0
    entry = {"text": text, "done": False}
    call.speaking.append(entry)
    await call.webhook("call.speak.started")
    await asyncio.sleep(max(0.5, len(text) / rate) if rate > 0 else 0.0)
    entry["done"] = True
    if call.caller is not None:
        call.caller.lines.append(Line("agent", start, call.caller.now(), text))
    await call.webhook("call.speak.ended", status="completed")


async def before_hangup(call: TelnyxCall) -> None:
    """Speech cut short by the hang-up ends with ``status: call_hangup``."""
    for entry in call.speaking:
        if not entry["done"]:
            entry["done"] = True
            await call.webhook("call.speak.ended", status="call_hangup")


async def after_hangup(call: TelnyxCall, answered_seconds: float | None) -> None:
    """``call.recording.saved`` per recording, then (when enabled) ``call.cost``."""
    for rec in call.recordings:
        rec["ended"] = rec["ended"] or now_iso()
        base = call.settings.api_base_url.rstrip("/")
        url = f"{base}/recordings/{rec['id']}.{rec['format']}?token={secrets.token_hex(8)}"
        await call.webhook("call.recording.saved", drop_call_control_id=True,
                           channels=rec["channels"], recording_started_at=rec["started"],
                           recording_ended_at=rec["ended"],
                           recording_urls={rec["format"]: url},
                           public_recording_urls={})
    if getattr(call, "post_cost", False):
        billed = 0 if answered_seconds is None else max(60, -(-int(answered_seconds) // 60) * 60)
        cost = f"{billed / 60 * RATE_PER_MINUTE:.4f}"
        await call.webhook("call.cost", total_cost=cost, billed_duration_secs=billed,
                           status="success", cost_parts=[{
                               "call_part": "call-control", "billed_duration_secs": billed,
                               "cost": cost, "currency": "USD",
                               "rate": f"{RATE_PER_MINUTE:.4f}"}])
