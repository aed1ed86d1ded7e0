"""Readiness: a rebalance that does not finish in time is stuck; one that finishes makes the worker ready."""

from __future__ import annotations

import time

from streams.worker._readiness import Readiness


def test_a_rebalance_past_its_timeout_is_stuck_and_a_finished_one_is_not() -> None:
    readiness = Readiness(10.0, restart=False)
    start = time.monotonic()
    assert not readiness.is_ready
    assert readiness.stuck_for(start + 5) == 0
    assert readiness.stuck_for(start + 15) > 4
    readiness.ready()
    assert readiness.is_ready
    assert readiness.stuck_for(start + 1_000) == 0
    readiness.rebalancing()
    assert not readiness.is_ready
    assert readiness.stuck_for(time.monotonic() + 11) > 0
