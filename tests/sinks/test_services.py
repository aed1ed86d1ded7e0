"""Each service's request, checked against the fields and limits its API documents."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import orjson

from sinks import (
    FunctionTransport,
    HttpResponse,
    OpsgenieSink,
    WebhookSink,
    alertmanager_alerts,
    opsgenie_alert,
    pagerduty_event,
    retry_after,
    slack_message,
)
from tests.sinks.conftest import make_alert


def test_pagerduty_trigger_and_resolve_share_the_dedup_key() -> None:
    trigger = pagerduty_event(make_alert(), "R" * 32)
    assert trigger["event_action"] == "trigger"
    assert trigger["routing_key"] == "R" * 32
    payload = trigger["payload"]
    assert set(payload) >= {"summary", "source", "severity"}  # required by Events API v2
    assert payload["severity"] in {"critical", "error", "warning", "info"}
    assert len(payload["summary"]) <= 1024
    assert payload["timestamp"].endswith("Z")
    resolve = pagerduty_event(make_alert(status="resolved"), "R" * 32)
    assert resolve == {"routing_key": "R" * 32, "event_action": "resolve", "dedup_key": trigger["dedup_key"]}


def test_opsgenie_alert_fields_and_limits() -> None:
    body = opsgenie_alert(make_alert(session_id="s-" + "x" * 300))
    assert len(body["message"]) <= 130
    assert body["alias"] == "kill-0123456789abcdef"
    assert body["priority"] == "P1"
    assert all(isinstance(v, str) for v in body["details"].values())


async def test_opsgenie_resolution_closes_the_alert_by_alias() -> None:
    calls: list[tuple[str, Mapping[str, str]]] = []

    async def handler(url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        calls.append((url, headers))
        return HttpResponse(202)

    sink = OpsgenieSink("og", FunctionTransport(handler), "key-1", "http://og.test")
    await sink.deliver(make_alert())
    await sink.deliver(make_alert(status="resolved"))
    assert [c[0] for c in calls] == [
        "http://og.test/v2/alerts",
        "http://og.test/v2/alerts/kill-0123456789abcdef/close?identifierType=alias",
    ]
    assert calls[0][1]["Authorization"] == "GenieKey key-1"


def test_slack_message_uses_block_kit_within_its_limits() -> None:
    message = slack_message(make_alert(reason="r" * 5000))
    assert message["text"]
    header, reason, facts, context = message["blocks"]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) <= 150
    assert len(reason["text"]["text"]) <= 3000
    assert len(facts["fields"]) <= 10
    assert all(len(f["text"]) <= 2000 for f in facts["fields"])
    assert context["type"] == "context"


def test_alertmanager_alert_labels_and_resolution() -> None:
    (firing,) = alertmanager_alerts(make_alert(), now_ms=1_795_000_100_000)
    assert firing["labels"]["alertname"] == "TripwireMaxSteps"
    assert firing["labels"]["session_id"] == "s-42"
    assert "endsAt" not in firing
    (resolved,) = alertmanager_alerts(make_alert(status="resolved"), now_ms=1_795_000_100_000)
    assert resolved["endsAt"] == "2026-11-18T11:08:20.000Z"


async def test_webhook_signature_covers_timestamp_and_body() -> None:
    seen: list[tuple[bytes, Mapping[str, str]]] = []

    async def handler(url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        seen.append((body, headers))
        return HttpResponse(204)

    sink = WebhookSink("hook", FunctionTransport(handler), "http://h.test", "s" * 32, clock=lambda: 1700)
    await sink.deliver(make_alert())
    ((body, headers),) = seen
    expected = hmac.new(b"s" * 32, b"1700." + body, hashlib.sha256).hexdigest()
    assert headers["X-Tripwire-Signature"] == f"sha256={expected}"
    assert orjson.loads(body)["alert_id"] == "kill-0123456789abcdef"


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0
    assert retry_after("soon") is None
    assert retry_after(None) is None
