"""Arguments of the Patter SDK (PyPI ``getpatter``) that have no meaning in patterd, and what to
do instead: people arrive with Patter code, and each such argument gets a clear error saying so
rather than being ignored. A harmless value (``tunnel=False``, ``dashboard=False``,
``mode="local"``, an empty string…) is accepted quietly.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

HOOKS = ("no in-process callbacks here: patterd is a daemon. Call records (status history, "
         "transcript, costs) are at GET /v1/calls (admin.token), metrics at /metrics, and every "
         "event is a JSON log line")
ON_MESSAGE = ("no in-process message handler here: use llm={'provider': 'webhook', 'url': "
              "'https://…', 'secret': '…'} and your endpoint answers each turn (a signed POST)")
TUNNEL = ("patterd starts no tunnel: run one yourself (cloudflared, ngrok) and pass "
          "webhook_url='abc.ngrok.app' (or set PATTERD_PUBLIC_URL)")
CLOUD = ("there is no Patter Cloud here: patterd is the server itself; give carrier= and "
         "phone_number=")

PATTER: Mapping[str, str] = {
    "tunnel": TUNNEL,
    "api_key": CLOUD, "backend_url": CLOUD, "rest_url": CLOUD, "mode": CLOUD,
    "twilio_sid": "use carrier=Twilio(account_sid=…, auth_token=…)",
    "twilio_token": "use carrier=Twilio(account_sid=…, auth_token=…)",
    "telnyx_key": "use carrier=Telnyx(api_key=…, connection_id=…, public_key=…)",
    "telnyx_connection_id": "use carrier=Telnyx(api_key=…, connection_id=…, public_key=…)",
    "openai_key": "give it to the provider: llm={'provider': 'openai', 'api_key': …} (or set "
                  "OPENAI_API_KEY)",
    "deepgram_key": "give it to the provider: stt={'provider': 'deepgram', 'api_key': …} (or "
                    "set DEEPGRAM_API_KEY)",
    "elevenlabs_key": "give it to the provider: tts={'provider': 'elevenlabs', 'api_key': …} "
                      "(or set ELEVENLABS_API_KEY)",
}

AGENT: Mapping[str, str] = {
    "engine": "patterd runs speech-to-text, a language model and text-to-speech in turn; there "
              "is no realtime engine: give stt=, llm= and tts= (e.g. llm='openai')",
    "guardrails": "no output guardrails here: say what not to say in system_prompt",
    "hooks": "no pipeline hooks here: " + HOOKS,
    "text_transforms": "no text transforms here: the agent's text is spoken as it comes",
    "audio_filter": "no audio filters here: the caller's audio goes to the VAD and STT as sent",
    "background_audio": "no background audio here",
    "aggressive_first_flush": "the agent speaks sentence by sentence as tokens arrive; there is "
                              "no first-clause flush to turn on",
    "barge_in_threshold_ms": "barge-in is on or off here (barge_in=True/False; 0 means off); "
                             "how much speech counts is the VAD's min_speech in seconds "
                             "(vad={'provider': 'silero', 'min_speech': 0.3})",
}

SERVE: Mapping[str, str] = {
    "on_call_start": HOOKS, "on_call_end": HOOKS, "on_transcript": HOOKS, "on_metrics": HOOKS,
    "on_message": ON_MESSAGE,
    "dashboard": "no dashboard here: " + HOOKS,
    "dashboard_token": "no dashboard here: the admin API's token is admin={'token': …} "
                       "(or PATTERD_ADMIN_TOKEN)",
    "tunnel": TUNNEL,
}

CALL: Mapping[str, str] = {
    "first_message": "the first message belongs to the agent (phone.agent(first_message=…)); "
                     "per call, put {name} placeholders in it and pass variables={'name': …}",
    "from_number": "calls are placed from the daemon's own phone_number",
    "on_machine": "no in-process callbacks here: with machine_detection=True a machine gets "
                  "voicemail_message, and the call record (GET /v1/calls/{id}) holds the AMD "
                  "verdict",
}

# Values that ask for nothing: the Patter default, or "off".
_HARMLESS: Mapping[str, tuple[Any, ...]] = {
    "tunnel": (None, False), "mode": ("local",), "dashboard": (False,),
    "barge_in_threshold_ms": (300,), "aggressive_first_flush": (False,),
}


def refuse(where: str, given: Mapping[str, Any], table: Mapping[str, str],
           known: Iterable[str] = ()) -> None:
    """Raise ``TypeError`` for the first argument of ``given`` that has no meaning here
    (explained from ``table``) or is not known at all (with a "did you mean" among ``known``);
    harmless values of Patter arguments pass."""
    for name, value in given.items():
        if name in table:
            quiet = (*_HARMLESS.get(name, ()), None, "", (), [], {})
            if any(value is q or (type(value) is type(q) and value == q) for q in quiet):
                continue
            raise TypeError(f"{where}: {name}= has no meaning in patterd: {table[name]}")
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")


__all__ = ["AGENT", "CALL", "PATTER", "SERVE", "refuse"]
