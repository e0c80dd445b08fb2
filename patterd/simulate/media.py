"""One media-stream WebSocket, carrier side: what Twilio's and Telnyx's media servers do.

:class:`MediaLeg` connects to the daemon, sends ``connected`` and ``start``, streams the
caller's frames, and hands the daemon's ``media``/``mark``/``clear`` frames to the
:class:`~patterd.simulate.caller.Caller`. The frame shapes come from a :class:`Dialect`
(one per carrier, in ``twilio.py`` / ``telnyx.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..audio.codecs import Codec
from .caller import Caller


class LegError(Exception):
    """The media WebSocket could not be set up."""


def dial_url(stream_url: str, daemon_url: str) -> str:
    """Where to connect for ``stream_url``: the daemon's actual host (``--url``), the stream
    URL's path and query. Locally the public URL usually does not reach the daemon."""
    target, daemon = urlsplit(stream_url), urlsplit(daemon_url)
    scheme = "wss" if daemon.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, daemon.netloc, target.path or "/", target.query, ""))


class Dialect:
    """A carrier's media-stream frames as the carrier sends them. Counters are per stream."""

    carrier = ""

    def __init__(self) -> None:
        self._seq = 0
        self._chunk = 0
        self._t0 = 0.0

    def next_seq(self) -> str:
        """The next ``sequence number`` (``start`` is 1; ``connected`` has none)."""
        self._seq += 1
        return str(self._seq)

    def next_chunk(self) -> tuple[str, str]:
        """(chunk, timestamp in ms since the stream started), both strings as on the wire."""
        if self._chunk == 0:
            self._t0 = time.monotonic()
        self._chunk += 1
        return str(self._chunk), str(int((time.monotonic() - self._t0) * 1000))

    @staticmethod
    def dumps(obj: dict[str, Any]) -> str:
        """Compact JSON."""
        return json.dumps(obj, separators=(",", ":"))

    def connected(self) -> str:
        raise NotImplementedError

    def start(self) -> str:
        raise NotImplementedError

    def media(self, payload: bytes) -> str:
        raise NotImplementedError

    def dtmf(self, digit: str) -> str:
        raise NotImplementedError

    def mark(self, name: str) -> str:
        raise NotImplementedError

    def stop(self) -> str:
        raise NotImplementedError

    def check(self, msg: dict[str, Any]) -> str:
        """A problem with a frame the daemon sent (the carrier would drop it), or ``""``."""
        return ""


class MediaLeg:
    """A media WebSocket between the simulated carrier and the daemon."""

    def __init__(self, caller: Caller, dialect: Dialect, *, url: str,
                 headers: dict[str, str], tx_codec: Codec, rx_codec: Codec | None,
                 errors: list[str], warnings: list[str], drop_reason: str = "") -> None:
        self.caller = caller
        self.dialect = dialect
        self.url = url
        self.headers = headers
        self.tx_codec = tx_codec          # caller → daemon
        self.rx_codec = rx_codec          # daemon → caller (None: the carrier drops it)
        self.drop_reason = drop_reason
        self.errors = errors
        self.warnings = warnings
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.closed_by_daemon = False
        self._started = False
        self._stopping = False
        self._seen: set[str] = set()
        self.done = asyncio.Event()

    @property
    def started(self) -> bool:
        """``start`` was sent and the stream is still open."""
        return self._started and not self._stopping

    async def connect(self, session: aiohttp.ClientSession, timeout: float = 10.0) -> None:
        """Open the socket and send ``connected`` + ``start``; raises :class:`LegError`."""
        try:
            self.ws = await asyncio.wait_for(session.ws_connect(
                self.url, headers=self.headers, autoping=True, max_msg_size=16 * 1024 * 1024,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                compress=0), timeout)
        except aiohttp.WSServerHandshakeError as exc:
            raise LegError(f"the daemon refused the media WebSocket {self.url} "
                           f"(HTTP {exc.status})") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise LegError(f"cannot open the media WebSocket {self.url}: "
                           f"{exc or type(exc).__name__}") from None
        await self._send(self.dialect.connected())
        await self._send(self.dialect.start())
        self._started = True
        self.caller.counts["streams"] += 1
        self.caller.attach(self)            # the caller's audio goes into it from now

    async def run(self) -> None:
        """Receive the daemon's frames until the socket closes."""
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._problem("the daemon sent a binary frame; carriers accept JSON text "
                                  "frames only (Twilio warning 31950)")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            if not self._stopping:
                self.closed_by_daemon = True
                self._stopping = True
            self.caller.detach(self)
            self.done.set()

    async def stop(self) -> None:
        """End the stream as the carrier does: a ``stop`` frame, then close the socket."""
        if self.ws is None:
            return
        if not self._stopping and not self.ws.closed:
            await self._send(self.dialect.stop())
        self._stopping = True
        self.caller.detach(self)
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), timeout=5.0)
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
        self.done.set()

    async def drop(self) -> None:
        """The connection breaks, as when a carrier's media server or the network fails: the
        TCP connection is reset with no ``stop`` frame and no WebSocket close frame."""
        self._stopping = True
        self.caller.detach(self)
        ws = self.ws
        if ws is not None and not ws.closed:
            # aiohttp has no public abort for a client WebSocket; the connection's transport
            # does it (an RST where the platform allows, never a close handshake)
            conn = getattr(ws, "_conn", None)
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
            else:  # pragma: no cover - an aiohttp without the attribute: close the TCP socket
                ws._response.close()  # noqa: SLF001
            self.caller.counts["dropped"] += 1
        self.done.set()

    # ------------------------------------------------------------------ caller → daemon
    async def send_audio(self, pcm: bytes) -> bool:
        """One 20 ms frame of the caller's audio; False when it could not be sent."""
        if await self._send(self.dialect.media(self.tx_codec.encode(pcm))):
            self.caller.counts["tx_media"] += 1
            return True
        return False

    async def send_dtmf(self, digit: str) -> None:
        """A key press."""
        await self._send(self.dialect.dtmf(digit))

    async def send_mark(self, name: str) -> None:
        """The echo of a mark whose audio has played (or was cleared)."""
        await self._send(self.dialect.mark(name))

    async def _send(self, text: str) -> bool:
        ws = self.ws
        if ws is None or ws.closed or self._stopping:
            return False
        try:
            await ws.send_str(text)
            return True
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return False

    # ------------------------------------------------------------------ daemon → caller
    async def _on_text(self, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            self._problem("the daemon sent a frame that is not JSON (Twilio warning 31951)")
            return
        if not isinstance(msg, dict):
            self._problem("the daemon sent a JSON frame that is not an object")
            return
        problem = self.dialect.check(msg)
        if problem:
            self._problem(problem)
            return
        event = msg.get("event")
        if event == "media":
            self._on_media(msg.get("media"))
        elif event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self._problem("the daemon sent a mark without mark.name")
                return
            await self.caller.on_mark(name, self)
        elif event == "clear":
            await self.caller.on_clear(self)
        else:
            self._problem(f"the daemon sent an unknown event {str(event)[:40]!r}", warn=True)

    def _on_media(self, media: Any) -> None:
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self._problem("the daemon sent a media frame without media.payload")
            return
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._problem("the daemon sent media.payload that is not base64")
            return
        if self.rx_codec is None:
            self.caller.counts["rx_media_dropped"] += 1
            self._problem(self.drop_reason)
            return
        if len(raw) % self.rx_codec.bytes_per_sample:
            self._problem(f"the daemon sent a {self.rx_codec.name} payload of {len(raw)} bytes "
                          "(not whole samples)")
            return
        self.caller.on_media(self.rx_codec.decode(raw), self)

    def _problem(self, text: str, *, warn: bool = False) -> None:
        self.caller.counts["protocol_warnings" if warn else "protocol_errors"] += 1
        if text and text not in self._seen:
            self._seen.add(text)
            (self.warnings if warn else self.errors).append(text)
