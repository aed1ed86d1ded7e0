"""Local HTTP receivers standing in for PagerDuty, Opsgenie, Slack and a webhook consumer.

Each checks a request the way the service documents it and answers as the service does (PagerDuty 202 with
a status body, Opsgenie 202, Slack 200 "ok", a 400 for a request the service would reject). A receiver can
be stopped and started again on the same port, to play an outage.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from streams import free_port


@dataclass
class Received:
    service: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Receivers:
    def __init__(self, *, webhook_secret: str, reject_session: str = "s-reject") -> None:
        self.port = free_port()
        self.webhook_secret = webhook_secret.encode()
        self.reject_session = reject_session
        self.received: list[Received] = []
        self.problems: list[str] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, service: str) -> list[Received]:
        return [r for r in self.received if r.service == service]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/pagerduty/v2/enqueue", self._pagerduty)
        app.router.add_post("/opsgenie/v2/alerts", self._opsgenie)
        app.router.add_post("/opsgenie/v2/alerts/{alias}/close", self._opsgenie_close)
        app.router.add_post("/slack/hook", self._slack)
        app.router.add_post("/webhook", self._webhook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _bad(self, service: str, problem: str) -> web.Response:
        self.problems.append(f"{service}: {problem}")
        return web.json_response({"status": "invalid event", "message": problem}, status=400)

    async def _pagerduty(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body.get("routing_key"), str) or len(body["routing_key"]) != 32:
            return self._bad("pagerduty", "routing_key must be a 32-character integration key")
        if body.get("event_action") not in {"trigger", "acknowledge", "resolve"}:
            return self._bad("pagerduty", f"event_action {body.get('event_action')!r}")
        if body["event_action"] == "trigger":
            payload = body.get("payload") or {}
            missing = {"summary", "source", "severity"} - set(payload)
            if missing:
                return self._bad("pagerduty", f"payload misses {sorted(missing)}")
            if payload["severity"] not in {"critical", "error", "warning", "info"}:
                return self._bad("pagerduty", f"severity {payload['severity']!r}")
            if payload.get("source") == self.reject_session:
                return self._bad("pagerduty", "rejected on purpose")
        elif not body.get("dedup_key"):
            return self._bad("pagerduty", "resolve without dedup_key")
        self.received.append(Received("pagerduty", request.path, body, dict(request.headers)))
        answer = {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")}
        return web.json_response(answer, status=202)

    async def _opsgenie(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("GenieKey "):
            return self._bad("opsgenie", "no GenieKey authorization")
        body = await request.json()
        if not body.get("message") or len(body["message"]) > 130:
            return self._bad("opsgenie", "message missing or over 130 characters")
        if body.get("priority") not in {"P1", "P2", "P3", "P4", "P5"}:
            return self._bad("opsgenie", f"priority {body.get('priority')!r}")
        self.received.append(Received("opsgenie", request.path, body, dict(request.headers)))
        return web.json_response({"result": "Request will be processed", "requestId": "r-1"}, status=202)

    async def _opsgenie_close(self, request: web.Request) -> web.Response:
        if request.query.get("identifierType") != "alias":
            return self._bad("opsgenie", "close without identifierType=alias")
        self.received.append(Received("opsgenie-close", request.path, await request.json()))
        return web.json_response({"result": "Request will be processed", "requestId": "r-2"}, status=202)

    async def _slack(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("text") and not body.get("blocks"):
            return web.Response(status=400, text="no_text")
        if any(b.get("type") not in {"header", "section", "context", "divider"} for b in body["blocks"]):
            return web.Response(status=400, text="invalid_blocks")
        self.received.append(Received("slack", request.path, body))
        return web.Response(status=200, text="ok")

    async def _webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers.get("X-Tripwire-Timestamp", "")
        expected = hmac.new(self.webhook_secret, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        if request.headers.get("X-Tripwire-Signature") != f"sha256={expected}":
            return self._bad("webhook", "bad signature")
        self.received.append(Received("webhook", request.path, orjson.loads(raw), dict(request.headers)))
        return web.Response(status=204)
