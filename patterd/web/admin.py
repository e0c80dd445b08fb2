"""The admin API under ``/v1`` (README.md, "Outbound calls and the admin API"): place calls,
read call records, steer live calls.

Every request needs ``Authorization: Bearer <admin.token>`` (compared in constant time); with
no token configured the API is not served at all.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..call.actions import ActionError, resolve_target
from ..call.outbound import CallError, parse_outbound, place_call
from ..call.records import detail, summary  # noqa: F401 - summary re-exported
from ..call.remote import holder, steer
from ..call.registry import CallRecord
from ..carriers.ids import any_call_id, describe, valid_call_id
from ..config.backends import DTMF_SEND
from ..gateway import Gateway
from ..ops.logging import get_logger
from ..store import StoreError
from .auth import Handler, bearer_guard  # noqa: F401 - Handler re-exported
from .console_api import BadQuery, parse_filter
from .request import read_body

log = get_logger("patterd.admin")

MAX_LIMIT = 200


def _dumps(doc: Any) -> str:
    return json.dumps(doc, default=str)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def admin_routes(gw: Gateway) -> list[web.RouteDef]:
    """The ``/v1`` routes, or none when no admin token is configured."""
    token = gw.config.admin.token.encode()
    if not token:
        return []

    guarded = bearer_guard(token)

    async def body_of(request: web.Request) -> Any:
        server = gw.config.server
        raw = await read_body(request, server.max_body_bytes, server.body_timeout)
        try:
            return json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise web.HTTPBadRequest(text=json.dumps({"error": "body is not valid JSON"}),
                                     content_type="application/json") from None

    async def place(request: web.Request) -> web.StreamResponse:
        try:
            call = parse_outbound(await body_of(request),
                                  default_amd=gw.config.agent.machine_detection,
                                  default_voicemail=gw.config.agent.voicemail_message,
                                  agent_variables=gw.config.agent.variables)
        except ValueError as exc:
            return _error(400, str(exc))
        if gw.draining:
            return _error(503, "draining: not placing new calls")
        try:
            call_id = await place_call(gw, call)
        except CallError as exc:
            return _error(502, str(exc))
        return web.json_response({"call_id": call_id}, status=201)

    async def list_calls(request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return _error(400, "limit: expected an integer")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(400, f"limit: expected 1 to {MAX_LIMIT}")
        try:
            where = parse_filter(q)
        except BadQuery as exc:
            return _error(400, str(exc))
        writer = gw.store_writer
        await writer.flush(1.0)   # this process's latest changes are visible to its reads
        try:
            calls, cursor = await writer.store.list_calls(limit, cursor=q.get("cursor") or None,
                                                          where=where)
        except ValueError:
            return _error(400, "cursor: malformed")
        except StoreError as exc:
            return _error(503, f"the call store is unavailable: {exc}")
        out: dict[str, Any] = {"calls": calls}
        if cursor:
            out["next_cursor"] = cursor
        return web.json_response(out)

    async def record_or_404(request: web.Request) -> CallRecord:
        """The call from this process's registry, or — held by another replica — from the
        shared store. A call that ended (evicted from memory since) is a 409, as when held."""
        call_id = known_shape(request)
        rec = gw.registry.get(call_id)
        if rec is None:
            try:
                stored = await gw.store_writer.store.get_call(call_id)
            except StoreError:
                stored = None
            if stored is not None and stored.get("ended_at") is not None:
                raise web.HTTPConflict(text=json.dumps({
                    "error": f"the call has ended ({stored.get('outcome') or 'completed'})"}),
                    content_type="application/json")
            if stored is not None and stored.get("ended_at") is None:
                rec = gw.registry.ensure(call_id, stored.get("carrier") or gw.carrier_name,
                                         direction=stored.get("direction"),
                                         from_number=stored.get("from"),
                                         to_number=stored.get("to"))
            elif stored is None and await holder(gw, call_id) is not None:
                # Another replica holds its stream; its record is on the way to the store.
                rec = gw.registry.ensure(call_id, gw.carrier_name)
        if rec is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such call"}),
                                   content_type="application/json")
        return rec

    def known_shape(request: web.Request) -> str:
        """The path's call id, or 404 when it is not shaped like a carrier's call id
        (nothing is looked up for it)."""
        call_id = request.match_info["call_id"]
        if not any_call_id(call_id):
            raise web.HTTPNotFound(text=json.dumps({
                "error": f"no such call (expected {describe('twilio')} or "
                         f"{describe('telnyx')})"}), content_type="application/json")
        return call_id

    async def get_call(request: web.Request) -> web.StreamResponse:
        call_id = known_shape(request)
        rec = gw.registry.get(call_id)
        adopted = rec is not None and rec.adopted    # a dead process's call: see its part
        if rec is not None and gw.cluster is None and not adopted:
            return web.json_response(detail(rec))    # one process: its memory is freshest
        if gw.cluster is not None or adopted:   # the store merges what each writer saw
            await gw.store_writer.flush(1.0)
        try:
            stored = await gw.store_writer.store.get_call(call_id)
        except StoreError as exc:
            if rec is not None:      # what this replica saw is better than nothing
                return web.json_response(detail(rec))
            return _error(503, f"the call store is unavailable: {exc}")
        if stored is None:
            if rec is not None:
                return web.json_response(detail(rec))
            return _error(404, "no such call")
        return web.json_response(stored, dumps=_dumps)

    async def hangup(request: web.Request) -> web.StreamResponse:
        rec = await record_or_404(request)
        return _answer(*await steer(gw, rec, "hangup", {}))

    async def transfer(request: web.Request) -> web.StreamResponse:
        rec = await record_or_404(request)
        doc = await body_of(request)
        try:
            target = resolve_target(str(doc.get("to", "")) if isinstance(doc, dict) else "",
                                    gw.config.agent.transfer_targets)
        except ActionError as exc:
            return _error(400, f"to: {exc}")
        return _answer(*await steer(gw, rec, "transfer", {"to": target}))

    async def dtmf(request: web.Request) -> web.StreamResponse:
        rec = await record_or_404(request)
        doc = await body_of(request)
        digits = doc.get("digits") if isinstance(doc, dict) else None
        if not isinstance(digits, str) or not DTMF_SEND.fullmatch(digits):
            return _error(400, "digits: expected 1-32 of 0-9, *, #, A-D, w, W")
        return _answer(*await steer(gw, rec, "send_dtmf", {"digits": digits}))

    return [
        web.post("/v1/calls", guarded(place)),
        web.get("/v1/calls", guarded(list_calls)),
        web.get("/v1/calls/{call_id}", guarded(get_call)),
        web.post("/v1/calls/{call_id}/hangup", guarded(hangup)),
        web.post("/v1/calls/{call_id}/transfer", guarded(transfer)),
        web.post("/v1/calls/{call_id}/dtmf", guarded(dtmf)),
    ]


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)
