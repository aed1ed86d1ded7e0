"""`tripwire demo --json` as a script would run it: one JSON object on stdout, every scenario as expected."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from detectors import DetectorSettings, session_detectors
from tests.conftest import Broker

pytestmark = pytest.mark.integration


def test_demo_json_kills_every_runaway_and_no_healthy_agent(broker: Broker, redis_url: str) -> None:
    command = [sys.executable, "-m", "streams", "demo", "--json"]
    if broker.kind != "embedded":
        command += ["--bootstrap", broker.plain_bootstrap, "--redis", redis_url]
    # Embedded: the demo starts its own broker and Valkey, exactly as `make demo` does on a fresh machine.
    done = subprocess.run(command, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    report = orjson.loads(done.stdout)  # fails unless stdout is exactly one JSON document
    assert report["false_kills"] == 0
    scenarios = {s["name"]: s for s in report["scenarios"]}
    expected = {
        "runaway-tool-loop": "repeated_tool_call",
        "paging-forever": "max_steps",
        "over-budget": "max_cost_usd",
        "context-flood": "max_tokens",
    }
    for name, detector in expected.items():
        s = scenarios[name]
        assert (s["expected"], s["killed"], s["detector"]) == ("kill", True, detector)
        assert s["kill_latency_ms"] > 0
        assert s["steps_after_breach"] >= 0
    healthy = [s for s in scenarios.values() if s["expected"] == "none"]
    assert len(healthy) >= 7
    assert not any(s["killed"] for s in healthy)
    assert report["false_alerts"] == 0
    # Every detector the worker runs fired on the scenario written for it, as a kill or (for the ones whose
    # default mode warns) an alert.
    every = set(session_detector_names()) | {
        "tenant_daily_budget",
        "agent_budget",
        "tool_circuit",
        "memory_leak",
        "memory_namespace_leak",
    }
    assert every <= set(report["detectors_covered"]), every - set(report["detectors_covered"])
    for s in scenarios.values():
        if s["expected"] == "kill":
            assert s["killed"], s
        if s["expected"] != "none":
            assert s["detector"], s


def session_detector_names() -> list[str]:
    return [armed.detector.name for armed in session_detectors(DetectorSettings())]
