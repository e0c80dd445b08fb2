"""Deepgram ``/v1/listen`` wire protocol, free of I/O: encodings, control messages, the URL
query, what refusals and closes mean, and :class:`TurnAssembler`, which folds ``Results`` and
``UtteranceEnd`` messages into the caller's turn.

Turn assembly: every ``is_final`` Result fixes a segment; :meth:`TurnAssembler.take` joins the
segments since the previous take. ``final_end`` says how much of the stream's audio the final
results cover, ``end_of_turn`` whether a ``speech_final``/``UtteranceEnd`` came after the last
words, ``acks`` how many ``from_finalize`` Results arrived (see
:meth:`~patterd.backends.stt.deepgram_stream.DeepgramStream.finalize`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from yarl import URL

from ..errors import BackendError
from .base import PCM16, SAMPLE_RATE, Transcript

if TYPE_CHECKING:
    import aiohttp

PROVIDER_NAME = "deepgram"
ENCODINGS = {PCM16: ("linear16", 2), "PCMU": ("mulaw", 1), "PCMA": ("alaw", 1)}
"""Stream encoding -> (Deepgram's ``encoding`` parameter, bytes per sample)."""
KEEPALIVE = json.dumps({"type": "KeepAlive"})
FINALIZE = json.dumps({"type": "Finalize"})
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


def deepgram_error(message: str, status: int | None = None,
                   retryable: bool = True) -> BackendError:
    """A :class:`BackendError` of the Deepgram STT provider."""
    return BackendError("stt", PROVIDER_NAME, message, status=status, retryable=retryable)


def handshake_error(exc: aiohttp.WSServerHandshakeError) -> BackendError:
    """The error for a refused WebSocket handshake (Deepgram says why in ``dg-error``)."""
    headers = exc.headers or {}
    reason = headers.get("dg-error") or exc.message or "handshake refused"
    status = exc.status
    return deepgram_error(reason, status, retryable=status in (408, 429) or status >= 500)


def close_error(reason: str, code: int | None) -> BackendError:
    """The error for a socket Deepgram closed (or lost) while the stream was in use."""
    return deepgram_error(reason or f"Deepgram closed the connection (code {code})", code,
                          retryable=code != 1008)   # 1008 DATA-0000: undecodable audio


def listen_url(base_url: str, params: Mapping[str, str], encoding: str) -> URL:
    """The ``/listen`` URL for a stream fed ``encoding`` (``params``: the provider's query)."""
    return URL(f"{base_url}/listen").with_query(
        {**params, "encoding": ENCODINGS[encoding][0], "sample_rate": str(SAMPLE_RATE)})


def result_request_id(message: Mapping[str, Any]) -> str:
    """The ``request_id`` in a ``Results`` message's metadata (``""`` when absent)."""
    return str((message.get("metadata") or {}).get("request_id") or "")


class TurnAssembler:
    """The caller's turn as Deepgram's results describe it (one per stream)."""

    def __init__(self) -> None:
        self.segments: list[str] = []   # is_final texts since the last take
        self.interim = ""               # the latest non-final text
        self.final_end = 0.0            # s of stream audio covered by is_final results
        self.end_of_turn = False        # speech_final/UtteranceEnd since the last words
        self.acks = 0                   # from_finalize results received

    def on_results(self, m: Mapping[str, Any]) -> list[Transcript]:
        """Fold in one ``Results`` message; returns the transcripts to tell the session: an
        endpoint (on ``speech_final``), then the utterance so far when the message had words."""
        alts = (m.get("channel") or {}).get("alternatives") or [{}]
        text = str(alts[0].get("transcript") or "").strip()
        out: list[Transcript] = []
        if m.get("is_final"):
            # is_final and speech_final often arrive together: one segment, counted once.
            if text:
                self.segments.append(text)
            self.interim = ""
            end = float(m.get("start") or 0.0) + float(m.get("duration") or 0.0)
            self.final_end = max(self.final_end, end)
            if m.get("speech_final"):
                out += self.turn_over()
            else:
                self.end_of_turn = self.end_of_turn and not text
        else:
            self.interim = text
            if text:
                self.end_of_turn = False
        if m.get("from_finalize"):
            self.acks += 1
        if text:
            out.append(Transcript(" ".join([*self.segments, self.interim]).strip(), False))
        return out

    def turn_over(self) -> list[Transcript]:
        """speech_final or UtteranceEnd: an endpoint transcript, once per turn with words (the
        session may end the turn now instead of waiting for its own VAD's silence timer)."""
        out = []
        if not self.end_of_turn and self.segments:
            out.append(Transcript(" ".join(self.segments), False, endpoint=True))
        self.end_of_turn = True
        return out

    def take(self, with_interim: bool = False) -> str:
        """The segments (and, if asked, the interim) joined; starts the next turn."""
        parts = self.segments + ([self.interim] if with_interim and self.interim else [])
        self.segments, self.interim, self.end_of_turn = [], "", False
        return " ".join(parts)


__all__ = ["CLOSE_STREAM", "ENCODINGS", "FINALIZE", "KEEPALIVE", "PROVIDER_NAME",
           "TurnAssembler", "close_error", "deepgram_error", "handshake_error", "listen_url",
           "result_request_id"]
