"""Twilio's own price of a finished call, fetched from the Call resource once it completed.

Twilio reports what a call cost on its Call resource (``price``: a negative decimal string such
as ``"-0.0085"``, in ``price_unit``), but only a while after the call completed: until then the
field is ``null``. So when a call this process served completes, a background task fetches
``GET /Calls/{CallSid}.json`` on a growing schedule until a price shows up, and hands it to
``Gateway.carrier_priced``: the record's cost then says ``carrier_source: carrier`` and the
store gets the update. The webhook answer never waits for this; failures are logged and
counted (``patterd_backend_errors_total{backend="carrier",provider="twilio"}``), never raised;
the task is cancelled with the gateway's other tasks at shutdown.

``carrier.api_base_url`` on this machine (loopback) is a stand-in for Twilio: ``patterd
simulate`` serves the REST API while its calls run and is gone by the time the price is asked
for, or another simulation run serves it that does not know the call (404, from an answer
marked as the simulator's). Neither is a carrier failure: the estimate stays, logged at debug
level, nothing counted. Twilio itself, or a stand-in that fails otherwise, still counts.

That fetch lives in the process that served the call, and only while it runs. So every
``SWEEP_EVERY`` seconds one replica (``Store.exclusive``) also asks Twilio for the price of
the calls in the store that ended ``SWEEP_AFTER`` seconds to ``SWEEP_WINDOW`` ago and still
carry our estimate: a call whose status callback reached a replica that did not hold it, or
whose replica restarted, was drained or died before Twilio priced it, still gets its price.
The price goes into the store as a part of its own (``Store.add_carrier_price``), or through
the registry when this process holds the call.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from ...config import TwilioSettings
from ...ops.logging import get_logger
from ..rest import RestError, is_loopback
from .rest import TwilioRest

if TYPE_CHECKING:
    from ...call.registry import CallRecord
    from ...gateway import Gateway

log = get_logger("patterd.twilio")

#: Seconds to wait before each fetch (read when a fetch starts, so tests can shorten it).
SCHEDULE: tuple[float, ...] = (5.0, 15.0, 60.0, 180.0, 600.0)
#: Answers after which asking again cannot help (wrong credentials, no such call).
GIVE_UP = frozenset({401, 403, 404})
#: The sweep: seconds between rounds, before the first, and the window of call ends it
#: looks at (after the serving process's own schedule is over, for a day).
SWEEP_EVERY = 300.0
SWEEP_FIRST = 60.0
SWEEP_AFTER = sum(SCHEDULE) + 60.0
SWEEP_WINDOW = 86_400.0
SWEEP_BATCH = 200


def read_price(resource: Any) -> tuple[float | None, str]:
    """``(price, price_unit)`` of a Call resource; the price is None while Twilio has none
    yet. ``ValueError`` when the field holds something that is not a finite number."""
    if not isinstance(resource, dict):
        raise ValueError("the call resource is not a JSON object")
    raw = resource.get("price")
    unit = str(resource.get("price_unit") or "USD").upper()
    if raw is None or raw == "":
        return None, unit
    if isinstance(raw, bool):
        raise ValueError(f"price: expected a decimal, got {raw!r}")
    try:
        price = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"price: expected a decimal, got {raw!r}") from None
    if not math.isfinite(price) or abs(price) >= 1e6:
        raise ValueError(f"price: expected a finite amount, got {raw!r}")
    return price, unit


def fetch_later(gw: Gateway, settings: TwilioSettings, rec: CallRecord
                ) -> asyncio.Task[float | None] | None:
    """Start fetching ``rec``'s price in the background (once per call); the task, or None
    when a fetch for this call was already started."""
    if not gw.deduper.first_time(("twilio-price", rec.call_id)):
        return None
    rest = TwilioRest(gw.session, settings)
    return gw.spawn(fetch_price(gw, rest, rec), name="twilio-price")


async def fetch_price(gw: Gateway, rest: TwilioRest, rec: CallRecord,
                      schedule: tuple[float, ...] | None = None) -> float | None:
    """Ask for the call's price after each delay of ``schedule`` (default ``SCHEDULE``) until
    Twilio has one; apply it with ``gw.carrier_priced`` and return it (None if it never came)."""
    delays = SCHEDULE if schedule is None else schedule
    call_id = rec.call_id
    stand_in_gone = False
    try:
        for attempt, delay in enumerate(delays, 1):
            await asyncio.sleep(delay)
            try:
                resource = await rest.fetch_call(call_id)
            except RestError as exc:
                stand_in_gone = _stand_in_gone(gw, exc)
                if stand_in_gone:
                    log.debug("twilio_price_stand_in_gone", call_id=call_id, attempt=attempt,
                              reason=exc.message)
                    continue
                if _unknown_to_simulator(exc):
                    log.debug("twilio_price_unknown_to_simulator", call_id=call_id,
                              detail="another simulation run serves the carrier API")
                    return None
                gw.metrics.backend_errors.labels("carrier", "twilio").inc()
                log.warning("twilio_price_fetch_failed", call_id=call_id, attempt=attempt,
                            status=exc.status, code=exc.code, reason=exc.message)
                if exc.status in GIVE_UP:
                    return None
                continue
            try:
                price, unit = read_price(resource)
            except ValueError as exc:
                log.warning("twilio_price_malformed", call_id=call_id, error=str(exc))
                return None
            if price is None:
                log.debug("twilio_price_pending", call_id=call_id, attempt=attempt)
                continue
            if unit != "USD":   # our costs are in USD: keep the estimate rather than mix
                log.warning("twilio_price_not_usd", call_id=call_id, price=price,
                            price_unit=unit)
                return None
            # The registry's record now: the call may have been evicted from memory since
            # (and read back by a late callback); ``rec`` itself comes back if it was not.
            gw.carrier_priced(await gw.recall(call_id) or rec, price)
            log.info("twilio_price", call_id=call_id, price=price, price_unit=unit,
                     attempt=attempt)
            return price
    except asyncio.CancelledError:
        log.info("twilio_price_abandoned", call_id=call_id, reason="shutting down")
        raise
    if stand_in_gone:
        log.info("twilio_price_unavailable", call_id=call_id, attempts=len(delays),
                 detail="the local carrier API (a simulator?) is gone: keeping the estimate")
    else:
        log.warning("twilio_price_unavailable", call_id=call_id, attempts=len(delays),
                    waited_seconds=sum(delays))
    return None


def _stand_in_gone(gw: Gateway, exc: RestError) -> bool:
    """A local stand-in for Twilio's API that nothing serves any more (see the module doc)."""
    return exc.unreachable and is_loopback(gw.config.carrier.api_base_url)


def _unknown_to_simulator(exc: RestError) -> bool:
    """The simulator does not know the call: another run of it placed or answered it."""
    return exc.simulator and exc.status == 404


async def sweep_loop(gw: Gateway, settings: TwilioSettings) -> None:
    """Run :func:`sweep_prices` every ``SWEEP_EVERY`` seconds until cancelled; a failed
    round (store or API down) is logged, counted (``patterd_internal_errors_total
    {component="twilio_price_sweep"}``) and the next one tries again. The daemon runs it
    under its supervisor, which restarts it should it end anyway."""
    await asyncio.sleep(SWEEP_FIRST)
    given_up: set[str] = set()
    while True:
        try:
            await sweep_prices(gw, TwilioRest(gw.session, settings), given_up)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the loop outlives any outage
            log.warning("twilio_price_sweep_failed", error=str(exc) or type(exc).__name__,
                        retry_in=SWEEP_EVERY)
            gw.supervisor.report("twilio_price_sweep", exc)
        await asyncio.sleep(SWEEP_EVERY)


async def sweep_prices(gw: Gateway, rest: TwilioRest, given_up: set[str]) -> int:
    """One round: fetch the price of each stored Twilio call still on our estimate (if no
    other replica is sweeping now). ``given_up`` collects calls not to ask about again
    (unknown to Twilio, malformed or non-USD price). Returns how many were priced."""
    writer = gw.store_writer
    if writer is None:
        return 0
    store = writer.store
    now = time.time()
    priced = 0
    async with store.exclusive("twilio-price-sweep") as mine:
        if not mine:
            return 0
        ids = await store.unpriced_calls("twilio", now - SWEEP_WINDOW, now - SWEEP_AFTER,
                                         SWEEP_BATCH)
        for call_id in ids:
            if call_id in given_up:
                continue
            try:
                resource = await rest.fetch_call(call_id)
            except RestError as exc:
                if _stand_in_gone(gw, exc):   # no stand-in now: none for the others either
                    log.debug("twilio_price_stand_in_gone", call_id=call_id, attempt="sweep",
                              reason=exc.message)
                    break
                if _unknown_to_simulator(exc):
                    given_up.add(call_id)
                    continue
                gw.metrics.backend_errors.labels("carrier", "twilio").inc()
                log.warning("twilio_price_fetch_failed", call_id=call_id, attempt="sweep",
                            status=exc.status, code=exc.code, reason=exc.message)
                if exc.status in (401, 403):
                    break           # every other call would get the same answer
                if exc.status == 404:
                    given_up.add(call_id)
                continue
            try:
                price, unit = read_price(resource)
            except ValueError as exc:
                log.warning("twilio_price_malformed", call_id=call_id, error=str(exc))
                given_up.add(call_id)
                continue
            if price is None:
                continue
            if unit != "USD":
                log.warning("twilio_price_not_usd", call_id=call_id, price=price,
                            price_unit=unit)
                given_up.add(call_id)
                continue
            rec = gw.registry.get(call_id)
            if rec is not None and rec.cost is not None:
                gw.carrier_priced(rec, price)
            elif not await store.add_carrier_price(call_id, price):
                continue
            log.info("twilio_price", call_id=call_id, price=price, price_unit=unit,
                     attempt="sweep")
            priced += 1
    return priced
