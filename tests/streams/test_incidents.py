"""Incidents from the alert log: grouping without a broker, and the postmortem draft of a real kill."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest

from agents_contract import GuardedSession, SessionKilled
from streams import load_settings
from streams.lab._stack import LocalStack, budget_only
from streams.operator._incidents import group_incidents, read_incidents, render_markdown, session_timeline
from tests.conftest import Broker
from tests.sinks.conftest import make_alert


def test_alerts_of_one_kill_are_one_incident_with_its_escalation_status() -> None:
    kill = make_alert(alert_id="k-1", command_id="k-1", detected_at_ms=2_000)
    other = make_alert(alert_id="k-2", command_id="k-2", session_id="s-other", detected_at_ms=1_000)
    escalated = make_alert(
        alert_id="k-1-unacknowledged", command_id="k-1", action="escalated", detector="kill_unacknowledged"
    )
    first, second = group_incidents([kill, other, escalated])
    assert (first.incident_id, second.incident_id) == ("k-2", "k-1")  # oldest first
    assert second.kill == kill
    assert second.status == "escalated: agent did not ack"
    resolved = escalated.model_copy(update={"status": "resolved"})
    (again, _) = sorted(group_incidents([kill, escalated, resolved, other]), key=lambda i: i.incident_id)
    assert again.status == "escalation resolved"


@pytest.mark.integration
async def test_a_real_kill_reads_as_an_incident_with_timeline_and_acknowledgement(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=6),
        private_topics=True,
    ) as stack:

        async def fetch(url: str) -> str:
            await asyncio.sleep(0.002)
            return f"page {url}"

        async def runaway(session: GuardedSession) -> None:
            for i in range(30_000):  # until killed; the bound only turns a broken kill path into a failure
                await session.call_tool("fetch", {"url": f"/p/{i % 2}"}, fetch, f"/p/{i % 2}")

        async with (
            stack.guard() as guard,
            guard.session("s-incident", agent_id="crawler", tenant_id="acme", user_id="u-1") as session,
        ):
            with pytest.raises(SessionKilled) as killed:
                await session.run(runaway(session))
        settings = load_settings(stack.workdir / "tripwire.yaml")
        incident_id = killed.value.command.command_id

        incidents = []
        for _ in range(600):  # the alert is written before the kill, so it is there; bound the wait anyway
            incidents = [i for i in await read_incidents(settings) if i.incident_id == incident_id]
            if incidents:
                break
            await asyncio.sleep(0.05)
        (incident,) = incidents
        assert incident.summary()["status"] == "killed"
        timeline = await session_timeline(settings, incident)
        markdown = render_markdown(incident, timeline)

        cli = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "streams", "incidents", "list", "--json"],
            *["--config", str(stack.workdir / "tripwire.yaml")],
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(cli.communicate(), 120)
    kinds = [e.kind for e in timeline]
    assert kinds[0] == "session.started"
    assert kinds.count("tool.called") >= 7
    assert "control.ack" in kinds
    assert f"# Incident {incident_id}: session s-incident killed by max_steps" in markdown
    assert "agent crawler acknowledged (stopped)" in markdown
    assert "tool.called **<- breach**" in markdown
    assert "| max_steps | 7 | 6 |" in markdown
    assert "- kill issued -> acknowledgement:" in markdown
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert [r["session_id"] for r in listed if r["incident_id"] == incident_id] == ["s-incident"]
