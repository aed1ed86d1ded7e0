"""Delivery policy without a network: retries, Retry-After, the circuit breaker, dedupe and page budgets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from sinks import (
    CircuitBreaker,
    Delivery,
    FunctionTransport,
    HttpResponse,
    PagerDutySink,
    RetryPolicy,
)
from tests.sinks.conftest import make_alert


class MemoryLedger:
    """The ledger protocol in a dict (the Redis one is exercised by the integration tests)."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.pages: Counter[str] = Counter()

    async def delivered(self, key: str) -> bool:
        return key in self.done

    async def mark_delivered(self, key: str) -> None:
        self.done.add(key)

    async def count(self, key: str, window_s: int) -> int:
        self.pages[key] += 1
        return self.pages[key]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def service(*statuses: int, retry_after: str | None = None) -> tuple[FunctionTransport, list[int]]:
    answers, calls = list(statuses), []

    async def handler(url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        status = answers.pop(0) if answers else 202
        calls.append(status)
        return HttpResponse(status, {"Retry-After": retry_after} if retry_after else {})

    return FunctionTransport(handler), calls


def delivery(transport: FunctionTransport, clock: Clock, **kw: object) -> Delivery:
    return Delivery(
        PagerDutySink("pd", transport, "k" * 32),
        kw.pop("ledger", MemoryLedger()),  # type: ignore[arg-type]
        policy=RetryPolicy(base_s=1, cap_s=8),
        breaker=CircuitBreaker(failures=3, cooldown_s=30, clock=clock),
        sleep=clock.sleep,
        rand=lambda: 1.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_transient_failures_back_off_exponentially_and_honour_retry_after() -> None:
    transport, calls = service(503, 502, 429, retry_after="5")
    clock = Clock()
    outcome = await delivery(transport, clock, max_pages_per_incident_per_hour=None).send(make_alert())
    assert (outcome.result, outcome.attempts) == ("delivered", 4)
    assert calls == [503, 502, 429, 202]
    # Backoffs 1, 2, 4 (full jitter at its ceiling), never sooner than Retry-After: 5. The third failure
    # (at t=10) opened the breaker for 30 s, so after the backoff (t=15) it waits the 25 s that remain.
    assert clock.sleeps == [5.0, 5.0, 5.0, 25.0]


async def test_a_rejected_payload_is_dead_lettered_at_once() -> None:
    transport, calls = service(400)
    outcome = await delivery(transport, Clock()).send(make_alert())
    assert outcome.result == "dead_letter"
    assert outcome.error is not None
    assert "HTTP 400" in outcome.error
    assert calls == [400]


async def test_max_attempts_bounds_the_retries() -> None:
    transport, calls = service(500, 500, 500, 500)
    d = delivery(transport, Clock())
    d.policy = RetryPolicy(base_s=1, cap_s=8, max_attempts=2)
    outcome = await d.send(make_alert())
    assert (outcome.result, calls) == ("dead_letter", [500, 500])


async def test_the_same_alert_is_delivered_once_and_a_loop_pages_within_its_budget() -> None:
    transport, calls = service()
    ledger = MemoryLedger()
    d = delivery(transport, Clock(), ledger=ledger, max_pages_per_incident_per_hour=2)
    assert (await d.send(make_alert())).result == "delivered"
    assert (await d.send(make_alert())).result == "duplicate"
    # Other alerts of the same incident (same kill command) count against its budget...
    assert (await d.send(make_alert(alert_id="a-2"))).result == "delivered"
    assert (await d.send(make_alert(alert_id="a-3"))).result == "rate_limited"
    # ...but its resolution always goes out.
    assert (await d.send(make_alert(alert_id="a-2", status="resolved"))).result == "delivered"
    assert len(calls) == 3


def test_the_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_s=10, clock=clock)
    breaker.record_failure()
    assert breaker.wait_s() == 0
    breaker.record_failure()
    assert breaker.open
    assert breaker.wait_s() == 10
    clock.now = 10
    assert breaker.wait_s() == 0  # half-open: one trial may go
    breaker.record_failure()
    assert breaker.wait_s() == 10  # the trial failed: open again
    breaker.record_success()
    assert not breaker.open
