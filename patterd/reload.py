"""Re-reading the config file on SIGHUP: off the event loop, one reload at a time.

The file is read and parsed in a worker thread (within the limits of
:mod:`patterd.config.bounded_yaml`), so a large or hostile file never stalls live calls. A
SIGHUP that arrives while a reload runs does not start another one beside it: it marks one
more reload to run after it, which reads the file as it is then (the latest content wins). So
a storm of signals starts at most one new set of backends beyond the running one.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, ConfigError, load_config
from .ops.logging import get_logger

if TYPE_CHECKING:
    from .gateway import Gateway

log = get_logger("patterd.server")

#: Sections that need a restart: a reload keeps the running ones.
FIXED_SECTIONS = ("server", "carrier", "phone_number")


class Reloader:
    """Applies the re-read config file at ``path`` to new calls; SIGHUPs coalesce."""

    def __init__(self, gw: "Gateway", path: Path) -> None:
        self.gw, self.path = gw, Path(path)
        self._running: asyncio.Task[None] | None = None
        self._again = False
        self.runs = 0              # reloads carried out (each reads the file once)

    def request(self) -> asyncio.Task[None]:
        """Reload (the SIGHUP handler). Returns the task that, once done, has applied the
        file as it is now: the running reload's when one is running (it runs once more)."""
        if self._running is not None and not self._running.done():
            if not self._again:
                log.info("reload_queued", path=str(self.path),
                         detail="a reload is running; the file is read again after it")
            self._again = True
            return self._running
        self._running = self.gw.spawn(self._run(), name="reload")
        return self._running

    async def _run(self) -> None:
        while True:
            self._again = False
            self.runs += 1
            try:
                await self.reload_once()
            except Exception as exc:  # noqa: BLE001 - a bug here must not end later reloads
                self.gw.supervisor.report("reload", exc)
                log.error("reload_rejected", path=str(self.path),
                          problems=[f"{type(exc).__name__}: {exc}"],
                          detail="keeping the running configuration")
            if not self._again:
                return

    async def reload_once(self) -> None:
        """Read the file in a worker thread and apply it; a file that cannot be used is
        logged as ``reload_rejected`` and the running configuration stays."""
        try:
            new = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            log.error("reload_rejected", path=str(self.path), problems=exc.problems,
                      detail="keeping the running configuration")
            return
        gw, old = self.gw, self.gw.config
        fixed = [k for k in FIXED_SECTIONS if getattr(new, k) != getattr(old, k)]
        if new.store.url != old.store.url:
            fixed.append("store.url")
        if fixed:
            log.warning("reload_partial", detail=f"{', '.join(fixed)}: changes need a "
                                                 "restart; applying the other sections")
            new = replace(new, server=old.server, carrier=old.carrier,
                          phone_number=old.phone_number,
                          store=replace(new.store, url=old.store.url))
        if not backends_change(old, new):
            gw.config = new
            log.info("reloaded", path=str(self.path))
            return
        await self._swap_backends(new)

    async def _swap_backends(self, new: Config) -> None:
        """Start the new config's providers beside the running ones, then switch new calls to
        them; calls already live finish on the old ones, which close once the last has
        ended."""
        from .call.backends import Backends

        gw = self.gw
        try:
            fresh = await Backends.from_config(new, on_error=gw.backend_failed,
                                                 supervisor=gw.supervisor)
        except Exception as exc:  # noqa: BLE001 - a provider that cannot start: keep the old set
            log.error("reload_rejected", path=str(self.path), problems=[f"backends: {exc}"],
                      detail="keeping the running configuration")
            return
        old = gw.backends
        gw.backends, gw.config = fresh, new
        if old is not None:
            gw.retired.append(old)
            await gw.release_retired()
        log.info("reloaded", path=str(self.path), backends="restarted")


def backends_change(old: Config, new: Config) -> bool:
    """Whether new providers are needed (the offline recogniser's vocabulary and the rules
    agent's variables come from the agent section too)."""
    return any(getattr(old, k) != getattr(new, k) for k in ("stt", "llm", "tts", "vad", "agent"))


__all__ = ["Reloader", "backends_change"]
