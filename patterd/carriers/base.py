"""What every carrier offers the daemon: its webhook routes and its start-up work."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from ..config import CarrierSettings
    from ..gateway import Gateway


class Carrier(Protocol):
    """A carrier: settings plus the routes that translate its protocol."""

    name: ClassVar[str]
    settings: CarrierSettings

    def routes(self, gw: Gateway) -> list[web.RouteDef]:
        """The carrier's webhook (and later media) routes."""
        ...

    async def on_startup(self, gw: Gateway) -> None:
        """Work after the server listens (e.g. pointing the number at us); never fatal."""
        ...


# -- media-stream events: what a carrier's translator turns its frames into -------------------

from dataclasses import dataclass, field  # noqa: E402


@dataclass(slots=True)
class StreamStarted:
    """The stream is set up: ids, the inbound codec and the call's context."""

    stream_id: str
    call_id: str
    rx_codec: str = "PCMU"
    rx_rate: int = 8000
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AudioIn:
    """One inbound frame of codec bytes (as the carrier sent them)."""

    payload: bytes


@dataclass(slots=True)
class DtmfIn:
    """A key the caller pressed."""

    digit: str


@dataclass(slots=True)
class MarkPlayed:
    """A mark we sent came back: the audio queued before it has played (or was cleared)."""

    name: str


@dataclass(slots=True)
class StreamStopped:
    """The carrier ended the stream."""


@dataclass(slots=True)
class Ignored:
    """A frame we do not act on (``connected``, outbound-track echo, unknown events)."""

    reason: str


MediaEvent = StreamStarted | AudioIn | DtmfIn | MarkPlayed | StreamStopped | Ignored


class MalformedFrame(ValueError):
    """A frame that is not valid for the carrier's media protocol."""


class UnservableStart(MalformedFrame):
    """A ``start`` frame no call can be served from (no call id, audio we cannot decode):
    the socket is closed with ``code`` (4400, or 4415 for the audio format) and the reason."""

    def __init__(self, reason: str, code: int = 4400) -> None:
        super().__init__(reason)
        self.code = code


class MediaProtocol(Protocol):
    """A carrier's media-stream translator: frames in, events out, and frames to send.

    No socket, no task, no policy: pacing and turn-taking belong to the call session.
    """

    tx_codec: str

    def parse(self, text: str) -> MediaEvent:
        """Translate one text frame; raises :class:`MalformedFrame`."""
        ...

    def audio(self, payload: bytes) -> str:
        """A frame carrying ``payload`` (already in ``tx_codec``)."""
        ...

    def mark(self, name: str) -> str:
        """A frame asking to be told when playback reaches this point."""
        ...

    def clear(self) -> str:
        """A frame dropping all audio queued at the carrier."""
        ...


class CallControl(Protocol):
    """The carrier REST actions a live call needs. Each returns False when the carrier says
    the call had already ended, and raises ``RestError`` on a failure."""

    async def hangup(self, call_id: str) -> bool:
        """End the call."""
        ...

    async def transfer(self, call_id: str, target: str) -> bool:
        """Cold-transfer the call to an E.164 number or SIP URI."""
        ...

    async def send_dtmf(self, call_id: str, digits: str, parameters: dict[str, str]) -> bool:
        """Play DTMF into the call (``parameters``: the stream's context, for carriers that
        must re-attach the stream afterwards)."""
        ...

    @property
    def dtmf_ends_stream(self) -> bool:
        """True when sending DTMF replaces the media stream (Twilio)."""
        ...

    @property
    def stop_keeps_call_up(self) -> bool:
        """True when the carrier may stop a media stream while the call stays up and billing
        (Telnyx); Twilio moves on to the next TwiML verb, and there is none after ours."""
        ...

    async def restream(self, call_id: str, parameters: dict[str, str], handoff: str) -> bool:
        """Hand-off: point the call's media at the public URL again with a new stream token
        and the hand-off ``handoff`` named (the load balancer picks the replica)."""
        ...

    async def stop_stream(self, call_id: str, stream_id: str) -> bool:
        """Stop one media stream of the call, the call staying up (after a hand-off)."""
        ...

    @property
    def movable(self) -> bool:
        """Whether :meth:`restream` can move this carrier's calls (False: browser calls)."""
        ...

    @property
    def restream_overlaps(self) -> bool:
        """True when :meth:`restream` leaves the old stream up until :meth:`stop_stream`
        (Telnyx), False when it ends the old stream at once (Twilio)."""
        ...
