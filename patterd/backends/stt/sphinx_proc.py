"""One pocketsphinx decoder process of the offline recogniser's pool, seen from the daemon.

:class:`DecoderProcess` starts ``python -m patterd.backends.stt.sphinx_worker`` (see there for
the protocol), does one request/answer round trip at a time and stops it. Every wait here is
bounded: a process that does not start, end or go away in time is killed or given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT = 60.0
MAX_ANSWER_BYTES = 64 * 1024      # 30 s of speech is a few hundred bytes of text
STOP_WAIT = 5.0                   # seconds a process has to exit at end of input before a kill
REAP_WAIT = 5.0                   # seconds to wait for a killed process (its pipes) to be gone


class DecoderGarbage(RuntimeError):
    """A decoder process answered something that is not a transcript (it is replaced)."""


class DecoderProcess:
    """One decoder process (see :mod:`.sphinx_worker`)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, decoder_args: dict[str, Any]) -> "DecoderProcess":
        """Start a worker and wait until its decoder is loaded."""
        root = str(Path(__file__).resolve().parents[3])     # the directory holding patterd/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        # A session of its own: Ctrl+C in the terminal signals the whole foreground process
        # group, and the daemon's drain still needs its decoders. The worker exits when its
        # stdin closes: on close(), and when the daemon dies, however it dies.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "patterd.backends.stt.sphinx_worker", json.dumps(decoder_args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            start_new_session=True)
        worker = cls(proc)
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.read(1), WORKER_START_TIMEOUT)
        except BaseException:
            worker.kill()
            with contextlib.suppress(BaseException):    # reap it before reporting (bounded)
                await asyncio.wait_for(asyncio.shield(proc.wait()), REAP_WAIT)
            raise
        if ready != b"R":
            worker.kill()
            await worker.reap()
            raise RuntimeError("pocketsphinx: the decoder process failed to start "
                               f"(exit code {proc.returncode}; see its stderr)")
        return worker

    async def decode(self, pcm: bytes) -> str:
        """One request/answer round trip."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(len(pcm).to_bytes(4, "little") + pcm)
        await self.proc.stdin.drain()
        n = int.from_bytes(await self.proc.stdout.readexactly(4), "little")
        if n > MAX_ANSWER_BYTES:
            raise DecoderGarbage(f"pocketsphinx: the decoder announced a {n}-byte answer")
        try:
            return (await self.proc.stdout.readexactly(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecoderGarbage(f"pocketsphinx: the decoder answered non-UTF-8 ({exc})") \
                from None

    def kill(self) -> None:
        """Kill the process now (reaped by whoever awaits ``proc.wait()``)."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def reap(self) -> bool:
        """Wait (at most ``REAP_WAIT`` s) for the process to be gone, pipes included (a
        process whose pipes a stray child holds open is given up on, not waited for forever).
        Whether it is gone."""
        try:
            await asyncio.wait_for(self.proc.wait(), REAP_WAIT)
            return True
        except asyncio.TimeoutError:
            log.warning("pocketsphinx: decoder process %d is not gone %g s after its end; "
                        "not waiting for it any longer", self.proc.pid, REAP_WAIT)
            return False

    async def stop(self) -> None:
        """End of input: the worker answers the request it holds, then exits; killed if it
        has not within ``STOP_WAIT`` s. Bounded: returns within ``STOP_WAIT + REAP_WAIT`` s."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_WAIT)
        except asyncio.TimeoutError:
            self.kill()
            await self.reap()


__all__ = ["DecoderGarbage", "DecoderProcess"]
