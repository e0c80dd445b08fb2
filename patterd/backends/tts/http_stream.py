"""Shared plumbing of the cloud TTS providers: one aiohttp session per provider and a
:class:`SpeechStream` over one streamed HTTP response.

Every cloud provider answers a POST with the audio as a chunked body, written as it is
synthesised. :class:`HttpSpeechStream` turns that body into audio chunks:

- the request is sent lazily, on the first ``__anext__``;
- connecting plus the first audio byte are bounded by the provider's timeout (a timer, so the
  per-chunk path pays nothing for it) → :class:`BackendError` (retryable);
- :meth:`HttpSpeechStream.cancel` (barge-in, from any task) closes the connection at once, so
  the provider sees the disconnect and stops synthesising; a pending read wakes up and the
  iteration ends;
- an error status becomes a :class:`BackendError` with the provider's own message;
- a 200 answer that is not the raw audio asked for (a JSON/HTML/text body, a WAV or MP3 file,
  an odd-length PCM16 body — see :mod:`.audio_check`) is a retryable :class:`BackendError`
  raised before any of it is played, so the next provider speaks the sentence;
- PCM16 chunks are cut at whole samples (an odd trailing byte is carried to the next chunk);
- an optional per-chunk ``transform`` (e.g. a resampler) with a ``finish`` for its tail.

Chunks are handed on as aiohttp received them (no re-slicing, no copy unless an odd byte had to
be carried, after the first few held for the check); the playout paces them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

import aiohttp

from ..errors import BackendError
from .audio_check import BodyCheck, NotAudio, refused_content_type
from .base import PCM16, TTS, SpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
"""Seconds for connecting plus the first audio byte when the config says 0."""
READ_IDLE = 15.0
"""Seconds without a byte in the middle of a stream before it counts as dropped."""
MAX_ERROR_BODY = 16384


def retryable_status(status: int) -> bool:
    """Whether another attempt (or provider) may succeed after this HTTP status."""
    return status in (408, 409, 425, 429) or status >= 500


class CloudTTS(TTS):
    """Base of the HTTP(S) providers: config, the lazily created session, error helpers."""

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> None:
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.timeout = cfg.timeout or DEFAULT_TIMEOUT
        self._api_key = cfg.api_key
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The provider's session, created on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                              sock_read=max(READ_IDLE, self.timeout)),
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        return self._session

    async def start(self) -> None:
        """Create the session (no network traffic: keys are checked by the first request)."""
        self.session()

    async def close(self) -> None:
        """Close the session and its pooled connections. Idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_encoding(self, encoding: str) -> None:
        """Refuse an encoding this provider did not advertise (a caller bug)."""
        if encoding not in self.output_encodings:
            raise ValueError(f"tts provider {self.name!r} cannot produce {encoding!r} "
                             f"(only {', '.join(sorted(self.output_encodings))})")

    def error(self, message: str, *, status: int | None = None,
              retryable: bool = True) -> BackendError:
        """A :class:`BackendError` for this provider, with the API key scrubbed out."""
        if self._api_key and self._api_key in message:
            message = message.replace(self._api_key, "***")
        return BackendError("tts", self.name, message, status=status, retryable=retryable)

    def parse_error(self, status: int, body: bytes) -> str:
        """The provider's own reason from an error body; subclasses know its shape."""
        return body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"


class DeadlineStream(SpeechStream):
    """A speech stream with a first-byte deadline timer that aborts the request."""

    _timer: asyncio.TimerHandle | None
    _timed_out: bool

    def _abort(self) -> None:
        raise NotImplementedError

    def _on_deadline(self) -> None:
        self._timer = None
        self._timed_out = True
        self._abort()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HttpSpeechStream(DeadlineStream):
    """The audio of one POST whose response body is the audio, streamed."""

    def __init__(self, tts: CloudTTS, url: str, *, json: Any, encoding: str,
                 headers: Mapping[str, str] | None = None,
                 params: Mapping[str, str] | None = None,
                 transform: Callable[[bytes], bytes] | None = None,
                 finish: Callable[[], bytes] | None = None) -> None:
        self._tts = tts
        self._url, self._params, self._headers, self._json = url, params, headers, json
        self._pcm16 = encoding == PCM16
        self._transform, self._finish = transform, finish
        self._resp: aiohttp.ClientResponse | None = None
        self._connect: asyncio.Task[aiohttp.ClientResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._carry = b""
        self._check: BodyCheck | None = BodyCheck(pcm16=self._pcm16)
        self._done = self._cancelled = self._timed_out = False
        self._first = True

    # ------------------------------------------------------------------ iteration

    async def __anext__(self) -> bytes:
        while not self._done:
            if self._cancelled:
                self._done = True
                break
            resp = self._resp
            if resp is None:
                resp = await self._open()
            try:
                data = await resp.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._broken(exc) from None
            if self._cancelled:
                break
            ended = not data
            if ended:                           # the provider finished
                self._done = True
                self._stop_timer()
                if self._first:
                    raise self._tts.error("the response had no audio")
            elif self._first:
                self._first = False
                self._stop_timer()
            if self._check is not None:         # the start of the body is not played unchecked
                try:
                    data = self._check.end() if ended else self._check.feed(data)
                except NotAudio as exc:
                    raise self._not_audio(str(exc)) from None
                if self._check.decided:
                    self._check = None
            if data and self._pcm16:
                data = self._whole_samples(data)
            if self._transform is not None and data:
                data = self._transform(data)
            if ended:
                if self._carry:
                    log.debug("tts %s: dropped a trailing half sample", self._tts.name)
                tail = self._finish() if self._finish is not None else b""
                data += tail[: len(tail) & ~1]
            if data:
                return data
            if ended:
                break
        raise StopAsyncIteration

    def _whole_samples(self, data: bytes) -> bytes:
        """Cut ``data`` (after any byte carried over) at a sample boundary."""
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if len(data) & 1:
            self._carry = data[-1:]
            data = data[:-1]
        return data

    async def _open(self) -> aiohttp.ClientResponse:
        """Send the request; returns the response once its status is known to be good."""
        if self._cancelled:
            self._done = True
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._tts.timeout, self._on_deadline)
        self._connect = loop.create_task(self._tts.session().post(
            self._url, params=self._params, headers=self._headers, json=self._json))
        try:
            resp = await self._connect
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():   # our caller is being cancelled
                self._broken(None)
                raise
            raise self._broken(None) from None   # cancel() or the deadline
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self._broken(exc) from None
        finally:
            self._connect = None
        if self._cancelled:                      # cancelled as the headers arrived
            resp.close()
            self._done = True
            raise StopAsyncIteration
        if resp.status >= 400:
            raise await self._status_error(resp)
        refused = refused_content_type(resp.headers.get("Content-Type", ""))
        if refused is not None:                  # e.g. a JSON error sent with 200
            raise await self._status_error(resp, f"not audio: {refused}")
        self._resp = resp
        return resp

    def _not_audio(self, reason: str) -> BackendError:
        """The body turned out not to be audio: drop the connection, nothing of it played."""
        self._done = True
        self._stop_timer()
        if self._resp is not None:
            self._resp.close()
        return self._tts.error(f"not audio: {reason}", status=200)

    async def _status_error(self, resp: aiohttp.ClientResponse,
                            what: str = "") -> BackendError:
        body = bytearray()
        try:
            while len(body) < MAX_ERROR_BODY:
                part = await resp.content.readany()
                if not part:
                    break
                body += part
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass                                  # keep what arrived
        finally:
            resp.close()
            self._stop_timer()
            self._done = True
        message = self._tts.parse_error(resp.status, bytes(body))
        if what:                                  # a 2xx answer that is no audio
            return self._tts.error(f"{what} ({message})", status=resp.status)
        return self._tts.error(message, status=resp.status,
                               retryable=retryable_status(resp.status))

    def _broken(self, exc: BaseException | None) -> BaseException:
        """What a failed connect/read means: the end (cancelled), a timeout or a drop."""
        self._done = True
        self._stop_timer()
        self._abort()
        if self._cancelled:
            return StopAsyncIteration()
        if self._timed_out:
            return self._tts.error(f"no audio within {self._tts.timeout:g} s")
        if isinstance(exc, asyncio.TimeoutError):
            return self._tts.error(f"stream stalled ({type(exc).__name__})")
        what = "connection failed" if self._first else "stream broke off"
        return self._tts.error(f"{what}: {exc or 'closed'}")

    # ------------------------------------------------------------------ stopping

    def _abort(self) -> None:
        """Drop the request wherever it is: pending connect, headers or body."""
        if self._connect is not None:
            self._connect.cancel()
        if self._resp is not None:
            self._resp.close()                  # wakes a pending read with an error

    def cancel(self) -> None:
        """Stop at once: the connection is closed, so the provider stops synthesising."""
        if self._cancelled:
            return
        self._cancelled = True
        self._stop_timer()
        self._abort()                           # a no-op once the body was read to the end

    async def aclose(self) -> None:
        """Cancel and let go of the connection."""
        self.cancel()
        self._done = True


class EmptySpeechStream(SpeechStream):
    """The (silent) stream of a text with nothing to say: providers reject empty input."""

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Nothing to stop."""


__all__ = ["CloudTTS", "DEFAULT_TIMEOUT", "EmptySpeechStream", "HttpSpeechStream", "READ_IDLE",
           "retryable_status"]
