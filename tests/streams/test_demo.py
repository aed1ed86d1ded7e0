"""`tripwire demo --json` as a script would run it: one JSON object on stdout, every scenario as expected."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.conftest import Broker

pytestmark = pytest.mark.integration


def test_demo_json_kills_every_runaway_and_no_healthy_agent(broker: Broker, redis_url: str) -> None:
    command = [sys.executable, "-m", "streams", "demo", "--json"]
    if broker.kind != "embedded":
        command += ["--bootstrap", broker.bootstrap, "--redis", redis_url]
    # Embedded: the demo starts its own broker and Valkey, exactly as `make demo` does on a fresh machine.
    done = subprocess.run(command, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    report = orjson.loads(done.stdout)  # fails unless stdout is exactly one JSON document
    assert report["false_kills"] == 0
    scenarios = {s["name"]: s for s in report["scenarios"]}
    expected = {
        "runaway-tool-loop": "max_steps",
        "over-budget": "max_cost_usd",
        "context-flood": "max_tokens",
    }
    for name, detector in expected.items():
        s = scenarios[name]
        assert (s["expected"], s["killed"], s["detector"]) == ("kill", True, detector)
        assert s["kill_latency_ms"] > 0
        assert s["steps_after_breach"] >= 0
    healthy = [s for s in scenarios.values() if s["expected"] == "none"]
    assert len(healthy) >= 3
    assert not any(s["killed"] for s in healthy)
    assert set(scenarios[next(iter(scenarios))]) == {
        "name",
        "expected",
        "killed",
        "detector",
        "steps_after_breach",
        "kill_latency_ms",
    }
