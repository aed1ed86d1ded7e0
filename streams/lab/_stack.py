"""A whole Tripwire on one machine: broker, Redis, topics and a worker process, for the demo and benchmarks.

Given a bootstrap address and a Redis URL it uses those; otherwise it starts the embedded broker and Valkey
on free loopback ports. Everything it started, it stops.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Self

from agents_contract import AgentGuard, KafkaSecurity
from detectors import DetectorSettings, wall_clock
from streams._config import load_settings
from streams._kafka import consumer_lag, ensure_topics, topic_specs, wait_for_broker
from streams.lab._embedded import EmbeddedKafka, EmbeddedRedis, free_port
from streams.lab._process import WorkerProcess, write_config


def budget_only(**limits: Any) -> dict[str, Any]:
    """A `detectors` section with only the session budget on (the limits given; the others off)."""
    sections = [
        name
        for name in DetectorSettings.model_fields
        if name not in ("allowed_lateness_ms", "intake", "session_budget", "tenants", "agents")
    ]
    budget = {"max_steps": None, "max_tokens": None, "max_cost_usd": None, **limits}
    return {"session_budget": budget, **{name: {"enabled": False} for name in sections}}


class LocalStack:
    def __init__(
        self,
        *,
        bootstrap: str | None = None,
        redis_url: str | None = None,
        detectors: dict[str, Any] | None = None,
        worker: dict[str, Any] | None = None,
        partitions: int = 4,
        private_topics: bool = False,
        idempotent: bool | None = None,
        sinks: dict[str, Any] | None = None,
        create_topics: bool = True,
        worker_args: tuple[str, ...] = (),
        kafka_security: dict[str, Any] | None = None,
        commands: dict[str, Any] | None = None,
        event_signing: dict[str, Any] | None = None,
        agent_kafka_security: dict[str, Any] | None = None,
        agent_redis_url: str | None = None,
    ) -> None:
        # What the stack's agents connect with when it is not what the worker uses (a principal and a Redis
        # user that may only do what an agent must: write events, read control and the fence).
        self.agent_security = KafkaSecurity.model_validate(
            agent_kafka_security if agent_kafka_security is not None else (kafka_security or {})
        )
        self._agent_redis_url = agent_redis_url
        self._commands = commands or {}
        self._event_signing = event_signing or {}
        # The `kafka.security` section for the worker and for every client the stack builds.
        self._kafka_security = kafka_security or {}
        self.security = KafkaSecurity.model_validate(self._kafka_security)
        # False leaves every topic to the worker's own start (as on a broker it has never seen).
        self._create_topics = create_topics
        self._worker_args = worker_args
        self._bootstrap = bootstrap
        self._redis_url = redis_url
        self._detectors = detectors or {}
        self._worker_overrides = worker or {}
        self._partitions = partitions
        self._idempotent = idempotent
        self._sinks = sinks or {}
        self.workdir = Path(tempfile.mkdtemp(prefix="tripwire-stack-"))
        self._kafka: EmbeddedKafka | None = None
        self._redis: EmbeddedRedis | None = None
        self.worker: WorkerProcess | None = None
        self.signing_key = secrets.token_hex(32)
        self.metrics_port = free_port()
        self.app_id = f"tripwire-{secrets.token_hex(4)}"
        self.idempotent = True
        # Tests share one broker: private topic names keep one test's events out of the next one's worker.
        # The stack's id goes last, so that prefixed ACLs (`agent.events-`, `agent.control-`) can grant an
        # agent principal exactly the README's rights on every private stack.
        suffix = f"-{self.app_id}" if private_topics else ""
        self.topics = {
            "events": f"agent.events{suffix}",
            "dlq": f"agent.events.dlq{suffix}",
            "control": f"agent.control{suffix}",
            "alerts": f"guardrail.alerts{suffix}",
            "alerts_dlq": f"guardrail.alerts.dlq{suffix}",
            "stages": f"tripwire.stages{suffix}",
            "verdicts": f"tripwire.verdicts{suffix}",
        }

    @property
    def bootstrap(self) -> str:
        assert self._bootstrap is not None
        return self._bootstrap

    @property
    def redis_url(self) -> str:
        assert self._redis_url is not None
        return self._redis_url

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def embedded(self) -> bool:
        return self._kafka is not None

    def settings_dict(self) -> dict[str, Any]:
        return {
            "signing_key": self.signing_key,
            "kafka": {
                "bootstrap": self.bootstrap,
                "idempotent_producer": self.idempotent,
                "security": self._kafka_security,
            },
            "commands": self._commands,
            "event_signing": self._event_signing,
            "redis": {"url": self.redis_url},
            "topics": {"partitions": self._partitions, **self.topics},
            "detectors": self._detectors,
            "sinks": self._sinks,
            # Tansu holds a group join for the whole rebalance timeout, so keep it short on one machine.
            "worker": {
                "app_id": self.app_id,
                "rebalance_timeout_s": 3,
                "session_timeout_s": 10,
                "metrics_port": self.metrics_port,
                "metrics_host": "127.0.0.1",
                **self._worker_overrides,
            },
        }

    async def __aenter__(self) -> Self:
        try:
            if self._bootstrap is None:
                self._kafka = EmbeddedKafka(self.workdir / "kafka").start()
                self._bootstrap = self._kafka.bootstrap
                self.idempotent = self._kafka.idempotent_producer
            elif self._idempotent is not None:
                self.idempotent = self._idempotent
            if self._redis_url is None:
                self._redis = EmbeddedRedis(workdir=self.workdir / "redis").start()
                self._redis_url = self._redis.url
            config = write_config(self.workdir / "tripwire.yaml", self.settings_dict())
            settings = load_settings(config)
            await wait_for_broker(self.bootstrap, security=self.security)
            if self._create_topics:
                await ensure_topics(self.bootstrap, topic_specs(settings), security=self.security)
            await self.start_worker()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def start_worker(self, *args: str) -> WorkerProcess:
        """Start the worker (`tripwire worker` with these extra arguments) and wait until it judges."""
        since = wall_clock()
        self.worker = WorkerProcess(
            self.workdir / "tripwire.yaml",
            app_id=self.app_id,
            redis_url=self.redis_url,
            log_path=self.workdir / "worker.log",
            command=("worker", *(args or self._worker_args)),
        )
        self.worker.start()
        await self.worker.wait_ready(since_ms=since)
        return self.worker

    async def drain(self, *, timeout_s: float = 60.0) -> None:
        """Return once the worker has judged and committed every event produced so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (
            lag := await consumer_lag(
                self.bootstrap, self.app_id, self.topics["events"], security=self.security
            )
        ) > 0:
            if loop.time() > deadline:
                raise TimeoutError(f"worker {self.app_id} still {lag} events behind after {timeout_s:g}s")
            await asyncio.sleep(0.1)

    def guard_settings(self) -> dict[str, Any]:
        """The AgentGuard (or SyncAgentGuard) arguments for this stack."""
        return {
            "bootstrap": self.bootstrap,
            "redis_url": self._agent_redis_url or self.redis_url,
            "signing_key": self.signing_key,
            "idempotent": self.idempotent,
            "events_topic": self.topics["events"],
            "control_topic": self.topics["control"],
            "kafka_security": self.agent_security,
        }

    def guard(self, **options: Any) -> AgentGuard:
        return AgentGuard(**{**self.guard_settings(), **options})

    async def __aexit__(self, *exc: object) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self._kafka is not None:
            self._kafka.stop()
        if self._redis is not None:
            self._redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
