"""Supervision of the process-wide workers: one bad item never stops a worker, and a worker
that dies anyway is restarted.

Every worker that serves all calls of a process (the VAD batcher, the recogniser pool, the
recording writer, the store writer, the cluster loops, the periodic sweeps) reports here:

- :meth:`Supervisor.report` — one item of work failed (one call's window, one row, one
  notification): logged with the call id, counted in ``patterd_internal_errors_total
  {component}``, and the worker goes on with the next item. Never raises.
- :meth:`Supervisor.start` — run a worker loop as a task; if it raises it is reported and
  started again after an exponential back-off (reset once it has run for a while).
- :meth:`Supervisor.mark_down` / :meth:`mark_up` — a call-critical worker cannot serve right
  now (between restarts, or a pool with no live process): ``/readyz`` answers 503 so that a
  load balancer sends new calls to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .logging import get_logger

log = get_logger("patterd.supervise")

__all__ = ["COMPONENTS", "Supervisor"]

#: The shared workers that report here (the ``component`` label of
#: ``patterd_internal_errors_total``; ``background``: a one-off background task that failed).
COMPONENTS = ("vad", "turn", "pocketsphinx", "espeak", "recorder", "store", "cluster_listener",
              "cluster_dispatch", "cluster_heartbeat", "cluster_reaper", "retention",
              "twilio_price_sweep", "systemd_watchdog", "loop_monitor", "recovery",
              "media", "call", "events", "telemetry", "background")

LOG_EVERY = 10.0          # seconds: at most one log line per component and call in this window
RESTART_FIRST = 0.05      # seconds before the first restart of a worker that died
RESTART_MAX = 30.0
HEALTHY_AFTER = 60.0      # a worker that ran this long starts its back-off afresh


class Supervisor:
    """One process's keeper of shared workers (one per gateway; tests make their own)."""

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        self._on_error = on_error or (lambda component: None)
        self._down: dict[str, str] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.errors: dict[str, int] = {}      # component -> failures reported
        self.restarts: dict[str, int] = {}    # component -> restarts of its loop

    # -- one item ----------------------------------------------------------------------------
    def report(self, component: str, exc: BaseException | str, *, call_id: str = "",
               **detail: Any) -> None:
        """One item of ``component``'s work failed; the worker goes on. Counted every time,
        logged at most once per ``LOG_EVERY`` seconds per component and call (the line says
        how many were not logged since)."""
        try:
            self.errors[component] = self.errors.get(component, 0) + 1
            self._on_error(component)
            key = (component, call_id)
            now = time.monotonic()
            if now - self._logged.get(key, -LOG_EVERY) < LOG_EVERY:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._logged[key] = now
            if len(self._logged) > 4096:     # bounded: forget the oldest windows
                for old in [k for k, t in self._logged.items() if now - t >= LOG_EVERY]:
                    self._logged.pop(old, None)
                    self._suppressed.pop(old, None)
            fields: dict[str, Any] = {"component": component, "error": _describe(exc), **detail}
            if call_id:
                fields["call_id"] = call_id
            if (skipped := self._suppressed.pop(key, 0)):
                fields["not_logged_since"] = skipped
            log.error("internal_error", **fields)
        except Exception:  # noqa: BLE001 - reporting must never be the next failure
            pass

    # -- a worker loop -----------------------------------------------------------------------
    def start(self, component: str, run: Callable[[], Awaitable[None]], *,
              critical: bool = False, first_delay: float = RESTART_FIRST,
              max_delay: float = RESTART_MAX) -> asyncio.Task[None]:
        """Run ``run()`` as a task for as long as it keeps failing: an exception is
        reported and ``run()`` starts again after a back-off. A ``critical`` worker is
        marked down while it waits to restart. Returns when ``run()`` returns; cancel the
        task to stop it."""
        task = asyncio.get_running_loop().create_task(
            self._keep(component, run, critical, first_delay, max_delay),
            name=f"supervised-{component}")
        self._tasks[component] = task
        task.add_done_callback(lambda t: self._tasks.get(component) is t
                               and self._tasks.pop(component, None))
        return task

    async def _keep(self, component: str, run: Callable[[], Awaitable[None]], critical: bool,
                    first_delay: float, max_delay: float) -> None:
        delay = first_delay
        while True:
            began = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the point of a supervisor
                self.report(component, exc, detail="worker died; restarting")
            if time.monotonic() - began >= HEALTHY_AFTER:
                delay = first_delay
            self.restarts[component] = self.restarts.get(component, 0) + 1
            if critical:
                self.mark_down(component, "restarting")
            try:
                await asyncio.sleep(delay)
            finally:
                if critical:
                    self.mark_up(component)
            delay = min(max_delay, delay * 2)

    # -- readiness ---------------------------------------------------------------------------
    def mark_down(self, component: str, reason: str) -> None:
        """A call-critical worker cannot serve now: new calls should go elsewhere."""
        if component not in self._down:
            log.error("worker_down", component=component, reason=reason)
        self._down[component] = reason

    def mark_up(self, component: str) -> None:
        """The worker serves again."""
        if self._down.pop(component, None) is not None:
            log.info("worker_up", component=component)

    @property
    def down(self) -> dict[str, str]:
        """Call-critical workers that cannot serve now, with the reason."""
        return dict(self._down)

    def running(self) -> list[str]:
        """Components whose supervised loop is running."""
        return sorted(c for c, t in self._tasks.items() if not t.done())

    async def stop(self) -> None:
        """Cancel every supervised loop and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _describe(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
