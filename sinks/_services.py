"""One sink per paging service: the request each documented API expects, built from an alert.

Every sink has a `name` and `async deliver(alert)`, raising `DeliveryError` when the service did not take
the alert. The payload builders are plain functions so tests can check them against the services' request
formats without a network: PagerDuty Events API v2, Opsgenie Alert API v2, Slack incoming webhooks (Block
Kit), Prometheus Alertmanager API v2, and a generic JSON webhook signed with HMAC-SHA256.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import orjson

from sinks._alert import Alert
from sinks._http import HttpTransport, raise_for_status

JSON: Final = {"Content-Type": "application/json"}
PAGERDUTY_URL: Final = "https://events.pagerduty.com/v2/enqueue"
OPSGENIE_URL: Final = "https://api.opsgenie.com"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _facts(alert: Alert) -> dict[str, str]:
    """The alert's facts as strings: what every service shows beside the summary. No event content."""
    facts = {
        "session_id": alert.session_id,
        "detector": alert.detector,
        "failure_class": alert.failure_class,
        "action": alert.action,
        "tenant_id": alert.tenant_id,
        "user_id": alert.user_id,
        "agent_id": alert.agent_id,
        "observed": f"{alert.observed:g}",
        "threshold": f"{alert.threshold:g}",
        "command_id": alert.command_id or "",
        "detected_at": _iso(alert.detected_at_ms),
    }
    return {k: v for k, v in facts.items() if v}


# --- PagerDuty Events API v2 -------------------------------------------------------------------------------


def pagerduty_event(alert: Alert, routing_key: str) -> dict[str, Any]:
    if alert.status == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert.alert_id}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.alert_id,
        "payload": {
            "summary": f"{alert.summary}: {alert.reason}"[:1024],
            "source": alert.session_id,
            "severity": alert.severity,  # critical, warning and info are PagerDuty severities too
            "timestamp": _iso(alert.detected_at_ms),
            "component": alert.agent_id or "session",
            "group": alert.tenant_id or "tripwire",
            "class": alert.failure_class,
            "custom_details": {**_facts(alert), "reason": alert.reason, "evidence": alert.evidence},
        },
        "client": "Tripwire",
    }


class PagerDutySink:
    def __init__(
        self, name: str, transport: HttpTransport, routing_key: str, url: str = PAGERDUTY_URL
    ) -> None:
        self.name, self._transport, self._key, self._url = name, transport, routing_key, url

    async def deliver(self, alert: Alert) -> None:
        body = orjson.dumps(pagerduty_event(alert, self._key))
        raise_for_status("PagerDuty", await self._transport.post(self._url, body, JSON))


# --- Opsgenie Alert API v2 ---------------------------------------------------------------------------------

_OPSGENIE_PRIORITY: Final = {"critical": "P1", "warning": "P3", "info": "P5"}


def opsgenie_alert(alert: Alert) -> dict[str, Any]:
    return {
        "message": alert.summary[:130],
        "alias": alert.alert_id[:512],
        "description": alert.reason[:15000],
        "tags": ["tripwire", alert.failure_class, alert.detector],
        "details": {**_facts(alert), "reason": alert.reason},
        "entity": alert.session_id,
        "source": "tripwire",
        "priority": _OPSGENIE_PRIORITY[alert.severity],
    }


class OpsgenieSink:
    def __init__(self, name: str, transport: HttpTransport, api_key: str, url: str = OPSGENIE_URL) -> None:
        self.name, self._transport, self._url = name, transport, url.rstrip("/")
        self._headers = {**JSON, "Authorization": f"GenieKey {api_key}"}

    async def deliver(self, alert: Alert) -> None:
        if alert.status == "resolved":
            url = f"{self._url}/v2/alerts/{quote(alert.alert_id, safe='')}/close?identifierType=alias"
            body = orjson.dumps({"source": "tripwire", "note": alert.reason[:25000]})
        else:
            url, body = f"{self._url}/v2/alerts", orjson.dumps(opsgenie_alert(alert))
        raise_for_status("Opsgenie", await self._transport.post(url, body, self._headers))


# --- Slack incoming webhook (Block Kit) --------------------------------------------------------------------


def slack_message(alert: Alert) -> dict[str, Any]:
    icon = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}
    head = ":white_check_mark: " if alert.status == "resolved" else f"{icon[alert.severity]} "
    facts = _facts(alert)
    return {
        "text": f"{alert.summary}: {alert.reason}"[:3000],  # the notification and fallback text
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": (head + alert.summary)[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.reason[:3000]}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{k}*\n{v}"[:2000]} for k, v in list(facts.items())[:10]
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"alert `{alert.alert_id}` · tripwire"}],
            },
        ],
    }


class SlackSink:
    def __init__(self, name: str, transport: HttpTransport, webhook_url: str) -> None:
        self.name, self._transport, self._url = name, transport, webhook_url

    async def deliver(self, alert: Alert) -> None:
        body = orjson.dumps(slack_message(alert))
        raise_for_status("Slack", await self._transport.post(self._url, body, JSON))


# --- Prometheus Alertmanager API v2 ------------------------------------------------------------------------


def alertmanager_alerts(alert: Alert, now_ms: int) -> list[dict[str, Any]]:
    labels = {
        "alertname": f"Tripwire{''.join(p.title() for p in alert.detector.split('_'))}",
        "severity": alert.severity,
        "failure_class": alert.failure_class,
        "detector": alert.detector,
        "session_id": alert.session_id,
        "tenant_id": alert.tenant_id,
        "alert_id": alert.alert_id,
    }
    body: dict[str, Any] = {
        "labels": {k: v for k, v in labels.items() if v},
        "annotations": {"summary": alert.summary, "description": alert.reason},
        "startsAt": _iso(alert.detected_at_ms),
    }
    if alert.status == "resolved":
        body["endsAt"] = _iso(now_ms)
    return [body]


class AlertmanagerSink:
    def __init__(
        self, name: str, transport: HttpTransport, url: str, clock: Callable[[], int] | None = None
    ) -> None:
        self.name, self._transport = name, transport
        self._url = url.rstrip("/") + "/api/v2/alerts"
        self._clock = clock or (lambda: int(datetime.now(tz=UTC).timestamp() * 1000))

    async def deliver(self, alert: Alert) -> None:
        body = orjson.dumps(alertmanager_alerts(alert, self._clock()))
        raise_for_status("Alertmanager", await self._transport.post(self._url, body, JSON))


# --- Generic webhook, HMAC-SHA256 signed -------------------------------------------------------------------


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` over `<timestamp>.<body>`: receivers recompute it and reject stale timestamps."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(
        self,
        name: str,
        transport: HttpTransport,
        url: str,
        secret: str,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.name, self._transport, self._url, self._secret = name, transport, url, secret.encode()
        self._clock = clock or (lambda: int(datetime.now(tz=UTC).timestamp()))

    async def deliver(self, alert: Alert) -> None:
        body = alert.to_bytes()
        timestamp = str(self._clock())
        headers = {
            **JSON,
            "X-Tripwire-Timestamp": timestamp,
            "X-Tripwire-Signature": webhook_signature(self._secret, timestamp, body),
        }
        raise_for_status("webhook", await self._transport.post(self._url, body, headers))
