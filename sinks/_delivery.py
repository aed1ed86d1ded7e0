"""Delivery an on-call engineer can trust: retries, a circuit breaker, dedupe and a page budget per incident.

`Delivery.send(alert)` returns only when the alert is delivered, was delivered before (same alert id and
status: a replay after a crash), is over its incident's page budget, or must be dead-lettered (the service
rejected it for good, or the retry budget ran out). Transient failures (connection errors, timeouts, 408,
429, 5xx) are retried with exponential backoff and full jitter, never sooner than the service's Retry-After;
after `breaker_failures` of them in a row the sink's circuit opens and stays open for `cooldown_s`, then lets
one trial through. With the default unlimited attempts, a sink outage delays alerts and loses none.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import Counter, Gauge

from sinks._alert import Alert
from sinks._http import DeliveryError

DELIVERIES = Counter(
    "tripwire_sink_deliveries_total", "Alerts handled by a sink, by result", ["sink", "result"]
)
FAILURES = Counter("tripwire_sink_failures_total", "Failed delivery attempts", ["sink", "retryable"])
RETRIES = Counter("tripwire_sink_retries_total", "Delivery attempts after the first", ["sink"])
CIRCUIT_OPEN = Gauge("tripwire_sink_circuit_open", "1 while the sink's circuit breaker is open", ["sink"])

Result = Literal["delivered", "duplicate", "rate_limited", "dead_letter"]


class Sink(Protocol):
    name: str

    async def deliver(self, alert: Alert) -> None: ...


class DeliveryLedger(Protocol):
    """What was delivered, and how often an incident paged: shared by every runner, so in Redis."""

    async def delivered(self, key: str) -> bool: ...

    async def mark_delivered(self, key: str) -> None: ...

    async def count(self, key: str, window_s: int) -> int: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 0.5
    cap_s: float = 60.0
    max_attempts: int | None = None  # None: retry transient failures until the alert is delivered

    def backoff_s(self, attempt: int, rand: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
        ceiling: float = min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 32))
        return rand() * ceiling


class CircuitBreaker:
    def __init__(
        self, failures: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self._consecutive = 0
        self._opened_at: float | None = None

    @property
    def open(self) -> bool:
        return self._opened_at is not None

    def wait_s(self) -> float:
        """How long to wait before the next attempt may go out (0: closed, or half-open for one trial)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def record_success(self) -> None:
        self._consecutive, self._opened_at = 0, None

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._opened_at = self._clock()  # a failed half-open trial opens it again


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    attempts: int
    error: str | None = None


class Delivery:
    def __init__(
        self,
        sink: Sink,
        ledger: DeliveryLedger,
        *,
        policy: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        max_pages_per_incident_per_hour: int | None = 10,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.sink, self._ledger = sink, ledger
        self.policy = policy or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._budget = max_pages_per_incident_per_hour
        self._sleep, self._rand = sleep, rand

    async def send(self, alert: Alert) -> Outcome:
        name = self.sink.name
        key = f"{name}:{alert.alert_id}:{alert.status}"
        if await self._ledger.delivered(key):
            return self._done(Outcome("duplicate", 0))
        # Resolutions always go out: a page that cannot be resolved is worse than one more message.
        if self._budget is not None and alert.status == "firing":
            incident = alert.command_id or alert.alert_id
            if await self._ledger.count(f"{name}:{incident}", 3600) > self._budget:
                return self._done(Outcome("rate_limited", 0))
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                RETRIES.labels(name).inc()
            if wait := self.breaker.wait_s():
                await self._sleep(wait)
            try:
                await self.sink.deliver(alert)
            except DeliveryError as exc:
                FAILURES.labels(name, str(exc.retryable).lower()).inc()
                if not exc.retryable:
                    return self._done(Outcome("dead_letter", attempt, exc.reason))
                self.breaker.record_failure()
                CIRCUIT_OPEN.labels(name).set(int(self.breaker.open))
                if self.policy.max_attempts is not None and attempt >= self.policy.max_attempts:
                    reason = f"gave up after {attempt} attempts: {exc.reason}"
                    return self._done(Outcome("dead_letter", attempt, reason))
                await self._sleep(max(exc.retry_after_s or 0.0, self.policy.backoff_s(attempt, self._rand)))
                continue
            except Exception as exc:  # a bug in a sink must not wedge the runner: keep the alert, move on
                FAILURES.labels(name, "false").inc()
                return self._done(Outcome("dead_letter", attempt, f"sink {name} raised {exc!r}"))
            self.breaker.record_success()
            CIRCUIT_OPEN.labels(name).set(0)
            await self._ledger.mark_delivered(key)
            return self._done(Outcome("delivered", attempt))

    def _done(self, outcome: Outcome) -> Outcome:
        DELIVERIES.labels(self.sink.name, outcome.result).inc()
        return outcome
