"""The shape of each carrier's call ids. Anything else is refused at every door (webhooks,
media starts, the admin API): an id is used as a key, in paths and in file names.

- Twilio ``CallSid``: ``CA`` + 32 hex digits.
- Telnyx ``call_control_id``: ``v3:`` (or the older ``v2:``) + URL-safe base64 text, e.g.
  ``v3:2EC-70CTEjlUq3tDM0CxKXIt5-5N4iP4wo7_-PfH-qub97Sk4EqO5w``.
- The console's browser test call: ``BR`` + 32 hex digits (minted by the daemon).
"""

from __future__ import annotations

import re

TWILIO_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
TELNYX_CALL_CONTROL_ID = re.compile(r"v[23]:[A-Za-z0-9_\-]{1,250}")
BROWSER_CALL_ID = re.compile(r"BR[0-9a-f]{32}")
CALL_ID = {"twilio": TWILIO_CALL_SID, "telnyx": TELNYX_CALL_CONTROL_ID,
           "browser": BROWSER_CALL_ID}


def valid_call_id(carrier: str, call_id: object) -> bool:
    """Whether ``call_id`` has the shape of ``carrier``'s call ids."""
    pattern = CALL_ID.get(carrier)
    return pattern is not None and isinstance(call_id, str) and bool(pattern.fullmatch(call_id))


def any_call_id(call_id: object) -> bool:
    """Whether ``call_id`` is shaped like some carrier's call id (records in a shared store
    may come from daemons of either carrier)."""
    return any(valid_call_id(carrier, call_id) for carrier in CALL_ID)


def describe(carrier: str) -> str:
    """What a valid id of ``carrier`` looks like, for error messages."""
    return {"twilio": "a CallSid (CA and 32 hex digits)",
            "browser": "a browser call id (BR and 32 hex digits)"}.get(
                carrier, "a call_control_id (v3:… or v2:…)")
