"""Tuning from data: `tripwire calibrate` proposes per-agent ceilings from healthy recordings, and
`tripwire replay --expect` scores a config (the proposal, or the defaults) against labelled sessions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from agents_contract import (
    SessionEnded,
    SessionStarted,
    ToolCalled,
    TurnCompleted,
    TurnStarted,
    encode_event,
)
from detectors import DetectorSettings
from streams.operator._calibrate import calibrate, percentile
from streams.operator._cli import main

T0 = 1_767_225_600_000


def session(sid: str, agent: str, *, steps: int, cost: float, context: int, seconds: float) -> list[bytes]:
    """A healthy run: `steps` steps (turns and tool calls alternating), spread over `seconds`."""
    envelope = {"session_id": sid, "agent_id": agent, "tenant_id": "acme", "user_id": "u"}
    at = lambda n: T0 + int(seconds * 1000 * n / max(steps, 1))  # noqa: E731
    events: list[Any] = [SessionStarted(**envelope, event_id=f"{sid}-0", seq=0, event_time_ms=T0)]
    for n in range(1, steps + 1):
        common = {**envelope, "event_id": f"{sid}-{n}", "seq": 2 * n, "event_time_ms": at(n)}
        if n % 2:
            events.append(TurnStarted(**common, model="m"))
            done = {**common, "event_id": f"{sid}-{n}-done", "seq": 2 * n + 1}
            share = cost / ((steps + 1) // 2)
            events.append(
                TurnCompleted(
                    **done,
                    model="m",
                    input_tokens=900,
                    output_tokens=100,
                    cost_usd=share,
                    context_tokens=context,
                )
            )
        else:
            events.append(ToolCalled(**common, tool_name="lookup", call_id=f"c{n}", args_digest=f"d{n}"))
    end = {**envelope, "event_id": f"{sid}-end", "seq": 2 * steps + 2, "event_time_ms": at(steps)}
    events.append(SessionEnded(**end))
    return [encode_event(e) for e in events]


def healthy_recording(rng: random.Random, agent: str = "support", runs: int = 40) -> list[bytes]:
    lines: list[bytes] = []
    for n in range(runs):
        lines += session(
            f"{agent}-{n}",
            agent,
            steps=rng.randint(4, 30),
            cost=rng.uniform(0.01, 0.2),
            context=rng.randint(2_000, 12_000),
            seconds=rng.uniform(20, 600),
        )
    return lines


def test_the_percentile_is_the_nearest_rank() -> None:
    assert percentile([float(n) for n in range(1, 21)], 0.95) == 19
    assert percentile([5.0], 0.95) == 5


def test_ceilings_sit_a_margin_above_each_agents_healthy_p95() -> None:
    lines = [
        line
        for n in range(20)
        for line in session(f"s-{n}", "support", steps=n + 1, cost=0.01 * (n + 1), context=1_000, seconds=60)
    ]
    lines += session("x-1", "rare", steps=3, cost=0.01, context=500, seconds=10)
    lines.append(b'{"kind": "turn.completed"}')
    result = calibrate(lines)
    assert (result.sessions, result.rejected) == (21, 1)
    support, rare = sorted(result.profiles, key=lambda p: p.agent_id != "support")
    assert (support.agent_id, support.sessions, rare.sessions) == ("support", 20, 1)
    # p95 of 1..20 steps is 19 (nearest rank): the ceiling is twice that; cost four times its p95.
    assert support.p95["steps"] == 19
    ceilings = support.ceilings()
    assert ceilings["session_budget"]["max_steps"] == 38
    assert ceilings["session_budget"]["max_cost_usd"] == pytest.approx(0.76)
    assert ceilings["session_deadline"]["max_duration_s"] == 120
    assert ceilings["context_blowup"]["max_context_tokens"] == 2_000


def test_the_proposal_pastes_as_config_and_backtests_clean_on_healthy_runs_while_a_runaway_dies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(7)
    healthy = tmp_path / "healthy.jsonl"
    healthy.write_bytes(b"\n".join(healthy_recording(rng)) + b"\n")
    assert main(["calibrate", str(healthy)]) == 0
    proposal = yaml.safe_load(capsys.readouterr().out)
    config = tmp_path / "tripwire.yaml"
    config.write_text(yaml.safe_dump(proposal))
    support = DetectorSettings.model_validate(proposal["detectors"]).agents["support"]
    assert 30 < support["session_budget"]["max_steps"] <= 60
    # Other healthy runs of the same agent, and one that runs away with its steps, all labelled.
    later = healthy_recording(random.Random(8), runs=30)
    runaway = session("support-runaway", "support", steps=200, cost=0.3, context=8_000, seconds=300)
    recording = tmp_path / "later.jsonl"
    recording.write_bytes(b"\n".join([*later, *runaway]) + b"\n")
    labels = {f"support-{n}": "none" for n in range(30)} | {"support-runaway": "kill"}
    expect = tmp_path / "expect.json"
    expect.write_bytes(orjson.dumps(labels))
    args = ["replay", str(recording), "--config", str(config), "--expect", str(expect), "--json"]
    assert main(args) == 0
    score = orjson.loads(capsys.readouterr().out.splitlines()[-1])["score"]
    assert (score["loops"], score["healthy"], score["recall"], score["false_kill_rate"]) == (1, 30, 1.0, 0.0)
    assert score["by_detector"] == {"max_steps": {"caught": 1, "false_kills": 0}}
    # The defaults (50 steps) catch it too, but later; text output says the same.
    assert main(["replay", str(recording), "--expect", str(expect)]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 loops killed (recall 100.0%); 0 of 30 healthy sessions killed" in text


def test_too_few_runs_of_an_agent_propose_nothing_for_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "few.jsonl"
    path.write_bytes(b"\n".join(healthy_recording(random.Random(1), runs=5)) + b"\n")
    assert main(["calibrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "too few to propose (at least 20)" in out
    assert yaml.safe_load(out) == {"detectors": {"agents": {}}}


def test_the_scenario_library_scores_every_loop_killed_and_no_healthy_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scenarios", str(tmp_path)]) == 0
    capsys.readouterr()
    events, expect, config = (tmp_path / name for name in ("events.jsonl", "expect.json", "tripwire.yaml"))
    args = ["replay", str(events), "--config", str(config), "--horizon-s", "500", "--expect", str(expect)]
    assert main([*args, "--json"]) == 0
    score = orjson.loads(capsys.readouterr().out.splitlines()[-1])["score"]
    labels = orjson.loads(expect.read_bytes())
    assert score["loops"] == sum(label == "kill" for label in labels.values()) >= 25
    assert score["healthy"] == sum(label == "none" for label in labels.values()) >= 25
    assert (score["recall"], score["false_kills"], score["missed"]) == (1.0, [], [])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"s-1": "maybe"}', "'maybe' is not allowed"),
        (b'["s-1"]', "expected a JSON object"),
        (b"{", "not JSON"),
    ],
)
def test_labels_that_are_not_kill_or_none_are_refused_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, why: str
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(session("s-1", "a", steps=3, cost=0.01, context=100, seconds=5)))
    expect = tmp_path / "expect.json"
    expect.write_bytes(content)
    assert main(["replay", str(events), "--expect", str(expect)]) == 2
    assert why in capsys.readouterr().err
