"""A secured cluster: Apache Kafka's SASL_SSL listener, which requires a client certificate from the test CA
and SASL PLAIN, SCRAM-SHA-256/512 or OAUTHBEARER. The worker, the agent SDK, the sink runner and the CLI
each reach it through `kafka.security` alone; wrong credentials or no client certificate are refused with
an error that never shows the password. Kafka tier only: the embedded Tansu has no TLS or SASL listener."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from typing import Any

import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from agents_contract import GuardedSession, KafkaSecurity, SessionKilled
from streams import RecordProducer, wait_for_broker
from streams._config import load_settings
from streams.lab._stack import LocalStack, budget_only
from streams.operator._sinks import run_sinks
from tests._tls import AGENT_USER, SASL_PASSWORD, kafka_security
from tests.conftest import ROOT, ApacheKafka, Broker
from tests.sinks.receivers import Receivers
from tests.waiting import DEADLINE_S, wait_for

pytestmark = pytest.mark.integration

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


@pytest.fixture
def kafka(broker: Broker) -> ApacheKafka:
    return broker.secured


async def search() -> None:
    await asyncio.sleep(0.002)


async def runaway(session: GuardedSession) -> None:
    for i in range(30_000):  # until killed; the bound only turns a broken kill path into a failure
        await session.call_tool("search", {"q": i % 2}, search)


@pytest.mark.parametrize("worker_mechanism", ["SCRAM-SHA-512", "OAUTHBEARER"])
async def test_the_whole_loop_runs_on_a_sasl_ssl_cluster(
    kafka: ApacheKafka, redis_url: str, worker_mechanism: str
) -> None:
    """Worker and its topics, SDK (each mechanism in turn), sink runner and CLI over SASL_SSL with mTLS."""
    receivers = Receivers(webhook_secret=secrets.token_hex(16))
    await receivers.start()
    tag = secrets.token_hex(3)
    hook = {"name": f"hook-{tag}", "type": "webhook", "url": receivers.url("/webhook")}
    try:
        async with LocalStack(
            bootstrap=kafka.secure_bootstrap,
            redis_url=redis_url,
            detectors=budget_only(max_steps=5),
            sinks={"targets": [{**hook, "secret": receivers.webhook_secret.decode()}]},
            kafka_security=kafka_security(kafka.pki, worker_mechanism),
            private_topics=True,
        ) as stack:
            settings = load_settings(stack.workdir / "tripwire.yaml")
            stop = asyncio.Event()
            sinks = asyncio.create_task(run_sinks(settings, stop=stop))
            try:
                for mechanism in MECHANISMS:
                    security = KafkaSecurity.model_validate(kafka_security(kafka.pki, mechanism))
                    async with (
                        stack.guard(kafka_security=security) as guard,
                        guard.session(f"s-{mechanism}", agent_id="a1", tenant_id="t", user_id="u") as session,
                    ):
                        with pytest.raises(SessionKilled) as killed:
                            await session.run(runaway(session))
                    assert killed.value.command.detector == "max_steps"
                    assert guard.health.broker_reachable, f"the SDK over {mechanism} lost the broker"

                def paged() -> bool:
                    return {f"s-{m}" for m in MECHANISMS} <= {
                        str(r.body.get("session_id")) for r in receivers.of("webhook")
                    }

                await wait_for("a page for every kill, through the sink runner", lambda: _true(paged()))
            finally:
                stop.set()
                await sinks
            # An operator command with the same config file reads the secured control topic.
            tail = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "streams",
                    "tail",
                    "control",
                    "--config",
                    str(stack.workdir / "tripwire.yaml"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert tail.returncode == 0, tail.stderr[-2000:]
            targets = {
                json.loads(line).get("key") for line in tail.stdout.splitlines() if line.startswith("{")
            }
            assert {f"s-{m}" for m in MECHANISMS} <= targets
            assert SASL_PASSWORD not in tail.stdout + tail.stderr
            log = (stack.workdir / "worker.log").read_text(errors="replace")
            assert SASL_PASSWORD not in log
    finally:
        await receivers.stop()


def agent_acls(topics: dict[str, str]) -> list[list[str]]:
    """The README's Kafka ACLs for agents: write events, read control; nothing else."""
    return [
        ["--operation", "Write", "--operation", "Describe", "--topic", topics["events"]],
        ["--operation", "Read", "--operation", "Describe", "--topic", topics["control"]],
    ]


async def test_agents_under_the_readme_acls_are_killed_and_cannot_forge(
    kafka: ApacheKafka, redis_url: str
) -> None:
    """The worker as a super user, the agent as a user with only the README's ACLs: the agent's events
    get it killed, and it cannot write a kill, a stage record or a stage verdict itself."""
    async with LocalStack(
        bootstrap=kafka.secure_bootstrap,
        redis_url=redis_url,
        detectors=budget_only(max_steps=5),
        kafka_security=kafka_security(kafka.pki, "SCRAM-SHA-512"),
        private_topics=True,
    ) as stack:
        for acl in agent_acls(stack.topics):
            await asyncio.to_thread(kafka.allow, f"User:{AGENT_USER}", *acl)
        agent = KafkaSecurity.model_validate(kafka_security(kafka.pki, "SCRAM-SHA-256", username=AGENT_USER))
        async with (
            stack.guard(kafka_security=agent) as guard,
            guard.session("s-acl", agent_id="a1", tenant_id="t", user_id="u") as session,
        ):
            with pytest.raises(SessionKilled):
                await session.run(runaway(session))
        assert guard.health.broker_reachable
        async with RecordProducer(stack.bootstrap, idempotent=True, security=agent) as producer:
            for internal in ("control", "stages", "verdicts"):
                with pytest.raises(TopicAuthorizationFailedError):
                    await asyncio.wait_for(
                        await producer.send(stack.topics[internal], b"s-acl", b"{}"), timeout=DEADLINE_S
                    )


@pytest.mark.parametrize(
    ("what", "changes"),
    [
        ("a wrong password", {"password": "not-the-password"}),
        ("no client certificate", {"cert_file": None, "key_file": None}),
    ],
)
async def test_the_cluster_refuses_wrong_credentials_without_echoing_them(
    kafka: ApacheKafka, what: str, changes: dict[str, Any]
) -> None:
    security = KafkaSecurity.model_validate(kafka_security(kafka.pki, "SCRAM-SHA-256", **changes))
    with pytest.raises(TimeoutError) as refused:
        await wait_for_broker(kafka.secure_bootstrap, timeout_s=5, security=security)
    assert SASL_PASSWORD not in str(refused.value)
    assert "not-the-password" not in str(refused.value)
    # The same settings, right, are let in (the refusal was the credentials, not the listener).
    good = KafkaSecurity.model_validate(kafka_security(kafka.pki, "SCRAM-SHA-256"))
    await wait_for_broker(kafka.secure_bootstrap, timeout_s=30, security=good)


async def test_plaintext_clients_cannot_read_the_secured_listener(kafka: ApacheKafka) -> None:
    with pytest.raises(TimeoutError):
        await wait_for_broker(kafka.secure_bootstrap, timeout_s=3)


async def _true(value: bool) -> bool:
    return value
