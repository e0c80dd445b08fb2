"""Twilio's own price of a finished call, fetched from the Call resource once it completed.

Twilio reports what a call cost on its Call resource (``price``: a negative decimal string such
as ``"-0.0085"``, in ``price_unit``), but only a while after the call completed: until then the
field is ``null``. So when a call this process served completes, a background task fetches
``GET /Calls/{CallSid}.json`` on a growing schedule until a price shows up, and hands it to
``Gateway.carrier_priced``: the record's cost then says ``carrier_source: carrier`` and the
store gets the update. The webhook answer never waits for this; failures are logged and
counted (``patterd_backend_errors_total{backend="carrier",provider="twilio"}``), never raised;
the task is cancelled with the gateway's other tasks at shutdown.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from ...config import TwilioSettings
from ...ops.logging import get_logger
from ..rest import RestError
from .rest import TwilioRest

if TYPE_CHECKING:
    from ...call.registry import CallRecord
    from ...gateway import Gateway

log = get_logger("patterd.twilio")

#: Seconds to wait before each fetch (read when a fetch starts, so tests can shorten it).
SCHEDULE: tuple[float, ...] = (5.0, 15.0, 60.0, 180.0, 600.0)
#: Answers after which asking again cannot help (wrong credentials, no such call).
GIVE_UP = frozenset({401, 403, 404})


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
    try:
        for attempt, delay in enumerate(delays, 1):
            await asyncio.sleep(delay)
            try:
                resource = await rest.fetch_call(call_id)
            except RestError as exc:
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
            gw.carrier_priced(rec, price)
            log.info("twilio_price", call_id=call_id, price=price, price_unit=unit,
                     attempt=attempt)
            return price
    except asyncio.CancelledError:
        log.info("twilio_price_abandoned", call_id=call_id, reason="shutting down")
        raise
    log.warning("twilio_price_unavailable", call_id=call_id, attempts=len(delays),
                waited_seconds=sum(delays))
    return None
