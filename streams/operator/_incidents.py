"""Incidents: what an operator reads after a page, assembled from the alert log and the session's events.

An incident is every alert about one kill: the kill itself, an escalation when no agent acknowledged it, the
escalation's resolution. Its id is the kill command's id, stable per session and detector (per invocation
for manual kills). Nothing extra is stored: `guardrail.alerts` is the incident log, and `incidents show`
reads the session's own events around the breach (one partition, from a lookback before it) for the
timeline and the agent's acknowledgement. `--markdown` renders a postmortem draft to paste.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from agents_contract import AgentEvent, ContractError, ControlAck, parse_event
from sinks import Alert
from streams._config import Settings
from streams._kafka import TopicReader, session_records

_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
LOOKBACK_MS = 15 * 60 * 1000


@dataclass
class Incident:
    incident_id: str
    alerts: list[Alert] = field(default_factory=list)

    @property
    def kill(self) -> Alert:
        """The alert that opened it: the kill (or, if the log lost it, the first alert)."""
        return next((a for a in self.alerts if a.action == "killed"), self.alerts[0])

    @property
    def severity(self) -> str:
        return max((a.severity for a in self.alerts), key=_SEVERITY_RANK.__getitem__)

    @property
    def opened_ms(self) -> int:
        return self.kill.detected_at_ms

    @property
    def status(self) -> str:
        escalations = [a for a in self.alerts if a.action == "escalated"]
        if not escalations:
            return self.kill.action
        return (
            "escalation resolved" if escalations[-1].status == "resolved" else "escalated: agent did not ack"
        )

    def summary(self) -> dict[str, Any]:
        k = self.kill
        return {
            "incident_id": self.incident_id,
            "opened": _utc(self.opened_ms),
            "session_id": k.session_id,
            "tenant_id": k.tenant_id,
            "detector": k.detector,
            "failure_class": k.failure_class,
            "severity": self.severity,
            "status": self.status,
            "reason": k.reason,
        }


def group_incidents(alerts: list[Alert]) -> list[Incident]:
    """Alerts in log order -> incidents, oldest first."""
    by_id: dict[str, Incident] = {}
    for alert in alerts:
        incident_id = alert.command_id or alert.alert_id
        by_id.setdefault(incident_id, Incident(incident_id)).alerts.append(alert)
    return sorted(by_id.values(), key=lambda i: i.opened_ms)


async def read_incidents(settings: Settings) -> list[Incident]:
    alerts: list[Alert] = []
    async with TopicReader(
        settings.kafka.bootstrap, settings.topics.alerts, security=settings.kafka.security
    ) as reader:
        await reader.mark_end()
        while not await reader.caught_up():
            for _, value, _ in await reader.read():
                try:
                    alerts.append(Alert.from_bytes(value or b""))
                except ValueError:
                    continue  # not an alert record; the sink runners dead-letter those
    return group_incidents(alerts)


async def session_timeline(settings: Settings, incident: Incident) -> list[AgentEvent]:
    since = (incident.kill.event_time_ms or incident.opened_ms) - LOOKBACK_MS
    raw = await session_records(
        settings.kafka.bootstrap,
        settings.topics.events,
        incident.kill.session_id,
        since_ms=since,
        security=settings.kafka.security,
    )
    events: list[AgentEvent] = []
    for value in raw:
        try:
            events.append(parse_event(value))
        except ContractError:
            continue  # dead-lettered by the worker; not part of what the agents did
    return sorted(events, key=lambda e: (e.event_time_ms, e.seq))


def render_markdown(incident: Incident, timeline: list[AgentEvent], *, rows: int = 40) -> str:
    k = incident.kill
    acks = [e for e in timeline if isinstance(e, ControlAck) and e.command_id == incident.incident_id]
    # The acknowledgement that settles the kill is `stopped`; a `stopping` before it shows the agent
    # refused further steps while its run was still ending.
    ack = next((e for e in acks if e.outcome != "stopping"), None)
    stopping = next((e for e in acks if e.outcome == "stopping"), None)
    agents = sorted({e.agent_id for e in timeline} | ({k.agent_id} if k.agent_id else set()))
    lines = [
        f"# Incident {incident.incident_id}: session {k.session_id} {k.action} by {k.detector}",
        "",
        f"- **Severity:** {incident.severity}; **failure class:** {k.failure_class}",
        f"- **Status:** {incident.status}",
        f"- **Tenant:** {k.tenant_id or '-'}; **user:** {k.user_id or '-'}",
        f"- **Agents:** {', '.join(agents) or '-'}",
        f"- **Opened:** {_utc(incident.opened_ms)}",
        "",
        "## What happened",
        "",
        f"{k.reason}. Tripwire {'killed' if k.action == 'killed' else k.action} the session at "
        f"{_utc(k.detected_at_ms)}.",
        "",
        "## Limits",
        "",
        "| detector | observed | threshold |",
        "|---|---|---|",
        f"| {k.detector} | {k.observed:g} | {k.threshold:g} |",
        "",
        "## What Tripwire did",
        "",
    ]
    for alert in incident.alerts:
        what = {
            "killed": "fenced the session in Redis and sent a signed kill",
            "escalated": "escalated",
            "tripped": "sent every agent a signed tool-scope command",
            "held": "paged once and held the stall kill of every session that went quiet with it",
        }
        verb = what.get(alert.action, alert.action)
        state = " (resolved)" if alert.status == "resolved" else ""
        lines.append(f"- {_utc(alert.detected_at_ms)}: {verb}{state}: {alert.reason}")
    if stopping is not None:
        lines.append(
            f"- {_utc(stopping.event_time_ms)}: agent {stopping.agent_id} refused further steps (stopping)"
        )
    if ack is not None:
        lines.append(f"- {_utc(ack.event_time_ms)}: agent {ack.agent_id} acknowledged ({ack.outcome})")
    elif stopping is not None:
        lines.append("- the agent's run never reported that it ended (no `stopped` acknowledgement)")
    else:
        lines.append("- no acknowledgement from any agent was found in the session's events")
    lines += ["", "## Timings", ""]
    if k.event_time_ms:
        lines.append(f"- breaching event -> kill issued: {k.detected_at_ms - k.event_time_ms} ms")
    if ack is not None:
        lines.append(f"- kill issued -> acknowledgement: {ack.event_time_ms - k.detected_at_ms} ms")
        if ack.kill_latency_ms is not None:
            lines.append(
                f"- breaching event sent -> kill received (measured by the SDK): {ack.kill_latency_ms:.1f} ms"
            )
    lines += [
        "",
        f"## Timeline (up to {rows} events around the breach, and the acknowledgement; UTC)",
        "",
        "| time | agent | event | detail |",
        "|---|---|---|---|",
    ]
    for event in _around_breach(timeline, k.event_id, ack, rows):
        marker = " **<- breach**" if event.event_id == k.event_id else ""
        lines.append(
            f"| {_utc(event.event_time_ms)} | {event.agent_id} | {event.kind}{marker} | {_detail(event)} |"
        )
    lines += [
        "",
        "## Evidence",
        "",
        "```json",
        orjson.dumps(k.evidence, option=orjson.OPT_INDENT_2).decode(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _around_breach(
    timeline: list[AgentEvent], breach_id: str, ack: AgentEvent | None, rows: int
) -> list[AgentEvent]:
    """What led to the breach (most rows), what ran after it until the kill landed, and the ack."""
    at = next((i for i, e in enumerate(timeline) if e.event_id == breach_id), len(timeline) - 1)
    after = min(10, rows // 4)
    shown = timeline[max(0, at - (rows - after) + 1) : at + after + 1]
    if ack is not None and ack not in shown:
        shown.append(ack)
    return shown


def _detail(event: AgentEvent) -> str:
    envelope = {"schema_version", "event_id", "session_id", "agent_id", "tenant_id", "user_id", "seq"}
    fields = event.model_dump(exclude={*envelope, "event_time_ms", "kind"}, exclude_none=True)
    return ", ".join(f"{k}={_short(v)}" for k, v in fields.items() if v != "")[:200].replace("|", "/")


def _short(value: Any) -> str:
    """Digests and ids cut to 8 characters, durations to 0.1: enough to correlate, short enough to read."""
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value)
    if len(text) > 16 and all(c in "0123456789abcdef" for c in text):
        return text[:8]
    return text


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
