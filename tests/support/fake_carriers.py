"""Local aiohttp servers speaking the carriers' REST APIs (paths, auth, body encodings and
error shapes as documented in shared/reference), recording every request they get."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    form: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    query: dict[str, str] = field(default_factory=dict)


class FakeTwilio:
    """``/2010-04-01/Accounts/{AccountSid}/…`` with HTTP Basic auth and form bodies."""

    def __init__(self, account_sid: str, auth_token: str, numbers: list[str]) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.numbers = {n: "PN" + f"{i:032x}" for i, n in enumerate(numbers, 1)}
        self.voice_urls: dict[str, str] = {}
        self.requests: list[Seen] = []
        self.ended_calls: set[str] = set()
        self.fail_next: list[int] = []  # statuses to answer with before behaving
        # Call resources by CallSid (GET /Calls/{sid}.json), and when each one's price shows
        # up: like Twilio, ``price`` is null until a while after the call completed.
        self.calls: dict[str, dict[str, Any]] = {}
        self.priced_at: dict[str, tuple[float, str]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        base = "/2010-04-01/Accounts/{sid}"
        app.router.add_get(base + "/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_post(base + "/IncomingPhoneNumbers/{pn}.json", self._update_number)
        app.router.add_post(base + "/Calls.json", self._create_call)
        app.router.add_post(base + "/Calls/{call}.json", self._update_call)
        app.router.add_get(base + "/Calls/{call}.json", self._fetch_call)
        app.router.add_post(base + "/Calls/{call}/Recordings.json", self._start_recording)
        return app

    async def _start_recording(self, request: web.Request) -> web.Response:
        await self._seen(request)
        call = request.match_info["call"]
        if call in self.ended_calls:
            raise _twilio_error(404, 20404, "The requested resource was not found")
        return web.json_response({"sid": "RE" + f"{len(self.requests):032x}",
                                  "call_sid": call, "status": "in-progress"}, status=201)

    def complete_call(self, sid: str, price: str = "-0.0085", *, after: float = 0.0,
                      duration: int = 30, direction: str = "inbound",
                      price_unit: str = "USD") -> None:
        """Twilio's record of a call that completed now; its ``price`` (a negative decimal
        string) is null for ``after`` seconds more."""
        call = self.calls.setdefault(sid, self._resource(sid, direction))
        call.update(status="completed", duration=str(duration), price_unit=price_unit)
        self.priced_at[sid] = (time.monotonic() + after, price)

    def _resource(self, sid: str, direction: str) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}"
        return {"sid": sid, "account_sid": self.account_sid, "status": "queued",
                "direction": direction, "duration": None, "price": None, "price_unit": "USD",
                "api_version": "2010-04-01", "uri": uri + ".json"}

    async def _fetch_call(self, request: web.Request) -> web.Response:
        await self._seen(request)
        sid = request.match_info["call"]
        call = self.calls.get(sid)
        if call is None:
            raise _twilio_error(404, 20404, "The requested resource was not found")
        when, price = self.priced_at.get(sid, (float("inf"), ""))
        return web.json_response({**call, "price": price if time.monotonic() >= when else None})

    async def _create_call(self, request: web.Request) -> web.Response:
        seen = await self._seen(request)
        form = dict(seen.form)
        if not form.get("To") or not form.get("From"):
            raise _twilio_error(400, 21201, "No 'To' number is specified")
        sid = "CA" + f"{len(self.requests):032x}"
        self.calls[sid] = {**self._resource(sid, "outbound-api"), "to": form["To"],
                           "from": form["From"]}
        return web.json_response(self.calls[sid], status=201)

    async def _seen(self, request: web.Request) -> Seen:
        form = []
        if request.method == "POST":
            if request.content_type != "application/x-www-form-urlencoded":
                raise web.HTTPUnsupportedMediaType()
            from urllib.parse import parse_qsl
            form = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        seen = Seen(request.method, request.path, dict(request.headers), form=form,
                    query=dict(request.query))
        self.requests.append(seen)
        auth = request.headers.get("Authorization", "")
        import base64
        expected = "Basic " + base64.b64encode(
            f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != expected or request.match_info["sid"] != self.account_sid:
            raise _twilio_error(401, 20003, "Authenticate")
        if self.fail_next:
            status = self.fail_next.pop(0)
            raise _twilio_error(status, 20500, "Internal Server Error")
        return seen

    async def _list_numbers(self, request: web.Request) -> web.Response:
        seen = await self._seen(request)
        want = seen.query.get("PhoneNumber")
        items = [{"sid": sid, "phone_number": num, "voice_url": self.voice_urls.get(sid, "")}
                 for num, sid in self.numbers.items() if want in (None, num)]
        return web.json_response({"incoming_phone_numbers": items, "next_page_uri": None,
                                  "page": 0, "page_size": 50})

    async def _update_number(self, request: web.Request) -> web.Response:
        seen = await self._seen(request)
        pn = request.match_info["pn"]
        if pn not in self.numbers.values():
            raise _twilio_error(404, 20404, "The requested resource was not found")
        self.voice_urls[pn] = dict(seen.form).get("VoiceUrl", "")
        return web.json_response({"sid": pn, "voice_url": self.voice_urls[pn]})

    async def _update_call(self, request: web.Request) -> web.Response:
        seen = await self._seen(request)
        call = request.match_info["call"]
        if call in self.ended_calls:
            raise _twilio_error(404, 20404, "The requested resource was not found")
        if dict(seen.form).get("Status") == "completed":
            self.ended_calls.add(call)
        return web.json_response({"sid": call, "status": "in-progress"})


def _twilio_error(status: int, code: int, message: str) -> web.HTTPException:
    body = json.dumps({"code": code, "message": message, "status": status,
                       "more_info": f"https://www.twilio.com/docs/errors/{code}"})
    exc = web.HTTPException(text=body, content_type="application/json")
    exc.set_status(status)
    return exc


class FakeTelnyx:
    """``/v2/calls/{call_control_id}/actions/{action}`` with Bearer auth and JSON bodies."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[Seen] = []
        self.ended_calls: set[str] = set()
        self.fail_next: list[int] = []
        self.command_ids: set[tuple[str, str]] = set()
        self.applied: list[tuple[str, str]] = []  # (call, action) applied once per command_id
        self.delay = 0.0  # seconds to sit on each command (a slow API)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/calls/{call}/actions/{action}", self._action)
        app.router.add_post("/v2/calls", self._dial)
        return app

    async def _dial(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Seen("POST", request.path, dict(request.headers), json=body))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _telnyx_error(401, "10009", "Authentication failed")
        if self.fail_next:
            return _telnyx_error(self.fail_next.pop(0), "10007", "Unexpected error")
        n = len(self.requests)
        return web.json_response({"data": {"call_control_id": f"v3:dialled-{n}",
                                           "call_leg_id": f"leg-{n}", "call_session_id": f"s-{n}",
                                           "is_alive": False, "record_type": "call"}})

    async def _action(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _telnyx_error(415, "10015", "Unsupported media type")
        body = await request.json()
        if self.delay:
            import asyncio
            await asyncio.sleep(self.delay)
        call, action = request.match_info["call"], request.match_info["action"]
        self.requests.append(Seen("POST", request.path, dict(request.headers), json=body))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _telnyx_error(401, "10009", "Authentication failed")
        if self.fail_next:
            return _telnyx_error(self.fail_next.pop(0), "10007", "Unexpected error")
        if call in self.ended_calls:
            return _telnyx_error(422, "90018", "Call has already ended")
        key = (call, str(body.get("command_id", "")))
        if key not in self.command_ids:  # Telnyx ignores a repeated command_id
            self.command_ids.add(key)
            self.applied.append((call, action))
        if action in ("hangup", "reject"):
            self.ended_calls.add(call)
        return web.json_response({"data": {"result": "ok"}})


def _telnyx_error(status: int, code: str, title: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "title": title, "detail": title}]},
                             status=status)
