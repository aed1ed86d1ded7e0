"""The sink runners: `guardrail.alerts` to every configured sink, each sink on its own consumer group.

One group per sink keeps sinks independent: Slack being down delays Slack's alerts, not PagerDuty's. A runner
reads its partitions in order and commits an alert's offset only after `Delivery` is done with it
(delivered, already delivered, over the incident's page budget, or dead-lettered to `guardrail.alerts.dlq`
with the reason), so a crash or an outage delays alerts and loses none. Runs as `tripwire sinks`, or inside
the worker with `sinks.in_worker: true`.
"""

from __future__ import annotations

import asyncio
import logging

from sinks import (
    AiohttpTransport,
    Alert,
    CircuitBreaker,
    Delivery,
    RedisLedger,
    RetryPolicy,
    SinkTarget,
    build_sink,
)
from streams._config import Settings
from streams._kafka import GroupReader, RecordProducer

log = logging.getLogger("tripwire.sinks")


def sink_group(settings: Settings, sink_name: str) -> str:
    return f"{settings.worker.app_id}-sink-{sink_name}"


async def run_sinks(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run a runner per configured sink until `stop` is set (or forever)."""
    targets = settings.sinks.targets
    if not targets:
        log.warning("no sinks configured (sinks.targets is empty): alerts stay on %s", settings.topics.alerts)
    stop = stop or asyncio.Event()
    d = settings.sinks.delivery
    transport = AiohttpTransport(timeout_s=d.timeout_s)
    ledger = RedisLedger(settings.redis.url)
    try:
        async with RecordProducer(
            settings.kafka.bootstrap,
            idempotent=settings.kafka.idempotent_producer,
            security=settings.kafka.security,
        ) as dead_letters:
            await asyncio.gather(
                *(_run_one(settings, target, transport, ledger, dead_letters, stop) for target in targets)
            )
    finally:
        await transport.close()
        await ledger.close()


async def _run_one(
    settings: Settings,
    target: SinkTarget,
    transport: AiohttpTransport,
    ledger: RedisLedger,
    dead_letters: RecordProducer,
    stop: asyncio.Event,
) -> None:
    d = settings.sinks.delivery
    delivery = Delivery(
        build_sink(target, transport),
        ledger,
        policy=RetryPolicy(d.base_backoff_s, d.max_backoff_s, d.max_attempts),
        breaker=CircuitBreaker(d.breaker_failures, d.breaker_cooldown_s),
        max_pages_per_incident_per_hour=d.max_pages_per_incident_per_hour,
    )
    topic = settings.topics.alerts
    async with GroupReader(
        settings.kafka.bootstrap, topic, sink_group(settings, target.name), security=settings.kafka.security
    ) as reader:
        log.info("sink %s (%s) reading %s", target.name, target.type, topic)
        while not stop.is_set():
            for partition, offset, key, value in await reader.read():
                reason: str | None
                try:
                    alert = Alert.from_bytes(value or b"")
                except ValueError as exc:
                    reason = f"not an alert record: {exc}"[:1024]
                else:
                    if not target.route.matches(alert):
                        await reader.commit(topic, partition, offset)
                        continue
                    outcome = await delivery.send(alert)
                    reason = outcome.error if outcome.result == "dead_letter" else None
                    log.info("sink %s: alert %s %s", target.name, alert.alert_id, outcome.result)
                if reason is not None:
                    headers = {
                        "tripwire.reason": reason.encode()[:1024],
                        "tripwire.sink": target.name.encode(),
                        "tripwire.source": f"{topic}/{partition}/{offset}".encode(),
                    }
                    sent = await dead_letters.send(
                        settings.topics.alerts_dlq, key, value or b"", headers=headers
                    )
                    await sent
                    log.error("sink %s dead-lettered %s: %s", target.name, headers["tripwire.source"], reason)
                await reader.commit(topic, partition, offset)
