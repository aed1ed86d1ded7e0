"""Sink runners end to end: a kill becomes a page in every configured service, a real Alertmanager shows it,
an outage delays alerts without losing or repeating them, and a rejected alert is dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agents_contract import GuardedSession, SessionKilled
from streams import RecordProducer, TopicReader, load_settings
from streams._kafka import consumer_lag
from streams.lab._stack import LocalStack, budget_only
from streams.operator._sinks import run_sinks, sink_group
from tests.conftest import Broker
from tests.sinks.conftest import make_alert
from tests.sinks.receivers import Receivers
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FAST = {"base_backoff_s": 0.05, "max_backoff_s": 0.2, "breaker_failures": 3, "breaker_cooldown_s": 0.3}


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    r = Receivers(webhook_secret=secrets.token_hex(16))
    await r.start()
    yield r
    await r.stop()


def targets(r: Receivers, tag: str) -> list[dict[str, Any]]:
    secret, pd = r.webhook_secret.decode(), r.url("/pagerduty/v2/enqueue")
    return [
        {"name": f"pd-{tag}", "type": "pagerduty", "routing_key": "R" * 32, "url": pd},
        {"name": f"og-{tag}", "type": "opsgenie", "api_key": "og-key", "url": r.url("/opsgenie")},
        {"name": f"slack-{tag}", "type": "slack", "webhook_url": r.url("/slack/hook")},
        {"name": f"hook-{tag}", "type": "webhook", "url": r.url("/webhook"), "secret": secret},
    ]  # fmt: skip


def alertmanager_alerts(alertmanager: str, session_id: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"filter": f'session_id="{session_id}"'})
    with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts?{query}", timeout=5) as response:
        found: list[dict[str, Any]] = json.loads(response.read())
        return found


async def test_a_kill_pages_every_sink_from_inside_the_worker(
    broker: Broker, redis_url: str, receivers: Receivers
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        sinks={"in_worker": True, "targets": targets(receivers, "e2e"), "delivery": FAST},
        private_topics=True,
    ) as stack:

        async def search() -> None:
            await asyncio.sleep(0.002)

        async def runaway(session: GuardedSession) -> None:
            for i in range(30_000):  # until killed; the bound only turns a broken kill path into a failure
                await session.call_tool("search", {"q": i % 2}, search)

        async with (
            stack.guard() as guard,
            guard.session("s-paged", agent_id="a1", tenant_id="acme", user_id="u") as session,
        ):
            with pytest.raises(SessionKilled):
                await session.run(runaway(session))

        def everywhere() -> bool:
            services = {r.service for r in receivers.received if "s-paged" in json.dumps(r.body)}
            return services >= {"pagerduty", "opsgenie", "slack", "webhook"}

        await wait_for("the kill alert in every sink", lambda: _true(everywhere()))
    assert receivers.problems == []
    (pd,) = receivers.of("pagerduty")
    assert pd.body["payload"]["source"] == "s-paged"
    assert pd.body["payload"]["class"] == "runaway_execution"
    (hook,) = receivers.of("webhook")
    assert (hook.body["detector"], hook.body["action"]) == ("max_steps", "killed")
    assert pd.body["dedup_key"] == hook.body["alert_id"]


async def test_alertmanager_shows_the_alert_and_its_resolution(
    broker: Broker, redis_url: str, alertmanager: str
) -> None:
    tag = secrets.token_hex(3)
    async with LocalStack(
        **broker.stack_options(redis_url),
        sinks={"targets": [{"name": f"am-{tag}", "type": "alertmanager", "url": alertmanager}]},
        private_topics=True,
    ) as stack:
        settings = load_settings(stack.workdir / "tripwire.yaml")
        session_id = f"s-am-{tag}"
        firing = make_alert(alert_id=f"a-{tag}", command_id=f"k-{tag}", session_id=session_id)
        stop = asyncio.Event()
        runner = asyncio.create_task(run_sinks(settings, stop=stop))
        try:
            async with RecordProducer(
                stack.bootstrap, idempotent=stack.idempotent, security=stack.security
            ) as producer:
                await (await producer.send(settings.topics.alerts, b"k", firing.to_bytes()))

                async def shown(state: str) -> list[dict[str, Any]] | None:
                    found = await asyncio.to_thread(alertmanager_alerts, alertmanager, session_id)
                    return found if found and found[0]["status"]["state"] == state else None

                (active,) = await wait_for("the alert, active, in Alertmanager", lambda: shown("active"))
                resolved = firing.model_copy(update={"status": "resolved"})
                await (await producer.send(settings.topics.alerts, b"k", resolved.to_bytes()))

                async def gone() -> bool:
                    # Alertmanager drops a resolved alert from its active list (the default filter).
                    return not await asyncio.to_thread(alertmanager_alerts, alertmanager, session_id)

                await wait_for("the resolution in Alertmanager", gone)
        finally:
            stop.set()
            await runner
    assert active["labels"]["alertname"] == "TripwireMaxSteps"
    assert active["labels"]["severity"] == "critical"
    assert active["annotations"]["description"] == firing.reason


async def test_an_outage_delays_alerts_and_loses_or_repeats_none(
    broker: Broker, redis_url: str, receivers: Receivers
) -> None:
    tag = secrets.token_hex(3)
    async with LocalStack(
        **broker.stack_options(redis_url),
        sinks={"targets": targets(receivers, tag), "delivery": FAST},
        private_topics=True,
    ) as stack:
        settings = load_settings(stack.workdir / "tripwire.yaml")
        await receivers.stop()  # every service is down
        alerts = [
            make_alert(alert_id=f"a-{i}", command_id=f"k-{i}", session_id=f"s-out-{i}") for i in range(3)
        ]
        resolved = make_alert(alert_id="a-0", command_id="k-0", session_id="s-out-0", status="resolved")
        async with RecordProducer(
            stack.bootstrap, idempotent=stack.idempotent, security=stack.security
        ) as producer:
            for alert in [*alerts, resolved]:
                key = alert.session_id.encode()
                await (await producer.send(settings.topics.alerts, key, alert.to_bytes()))

        stop = asyncio.Event()
        runner = asyncio.create_task(run_sinks(settings, stop=stop))
        try:
            labels = {"sink": f"pd-{tag}", "retryable": "true"}
            await wait_for(
                "failed attempts while the services are down",
                lambda: _true((REGISTRY.get_sample_value("tripwire_sink_failures_total", labels) or 0) >= 3),
            )
            assert receivers.received == []
            await receivers.start()  # the services come back

            def all_in() -> bool:
                return all(len(receivers.of(s)) == 4 for s in ("pagerduty", "slack", "webhook")) and (
                    len(receivers.of("opsgenie")) == 3 and len(receivers.of("opsgenie-close")) == 1
                )

            await wait_for("every alert in every service", lambda: _true(all_in()))
        finally:
            stop.set()
            await runner

        # A second runner (a restart) starts from the committed offsets: nothing is sent twice.
        stop2 = asyncio.Event()
        runner2 = asyncio.create_task(run_sinks(settings, stop=stop2))
        try:
            for target in targets(receivers, tag):
                group = sink_group(settings, target["name"])
                await wait_for(
                    f"{group} caught up",
                    lambda g=group: _is_zero(
                        consumer_lag(stack.bootstrap, g, settings.topics.alerts, security=stack.security)
                    ),
                )
        finally:
            stop2.set()
            await runner2
    assert receivers.problems == []
    assert [r.body["event_action"] for r in receivers.of("pagerduty")].count("trigger") == 3
    assert sorted(r.body["dedup_key"] for r in receivers.of("pagerduty")) == ["a-0", "a-0", "a-1", "a-2"]
    assert len(receivers.of("webhook")) == 4


async def test_a_rejected_alert_is_dead_lettered_and_the_next_one_delivered(
    broker: Broker, redis_url: str, receivers: Receivers
) -> None:
    tag = secrets.token_hex(3)
    async with LocalStack(
        **broker.stack_options(redis_url),
        sinks={"targets": targets(receivers, tag)[:1], "delivery": FAST},
        private_topics=True,
    ) as stack:
        settings = load_settings(stack.workdir / "tripwire.yaml")
        bad = make_alert(alert_id="a-bad", command_id="k-bad", session_id="s-reject")
        good = make_alert(alert_id="a-good", command_id="k-good", session_id="s-fine")
        async with RecordProducer(
            stack.bootstrap, idempotent=stack.idempotent, security=stack.security
        ) as producer:
            for raw in (bad.to_bytes(), b"not an alert", good.to_bytes()):
                await (await producer.send(settings.topics.alerts, b"k", raw))
        stop = asyncio.Event()
        runner = asyncio.create_task(run_sinks(settings, stop=stop))
        try:
            await wait_for("the good alert", lambda: _true(len(receivers.of("pagerduty")) == 1))
            async with TopicReader(
                stack.bootstrap, settings.topics.alerts_dlq, security=stack.security
            ) as reader:
                letters: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []

                async def two_letters() -> bool:
                    letters.extend(await reader.read())
                    return len(letters) >= 2

                await wait_for("two dead letters", two_letters)
        finally:
            stop.set()
            await runner
    reasons = sorted(h["tripwire.reason"].decode() for _, _, h in letters)
    assert reasons[0].startswith("PagerDuty answered HTTP 400")
    assert reasons[1].startswith("not an alert record")
    assert {v for _, v, _ in letters} == {bad.to_bytes(), b"not an alert"}
    assert receivers.of("pagerduty")[0].body["payload"]["source"] == "s-fine"


async def _true(value: bool) -> bool:
    return value


async def _is_zero(lag: Awaitable[int]) -> bool:
    return await lag == 0
