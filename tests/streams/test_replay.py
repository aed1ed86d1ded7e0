"""`tripwire replay`: the worker's judging code over recorded events, and the scenario library through it.

The scenario library is the suite's acceptance test: every runaway scenario must trip its own detector
under the default settings, and no healthy session may trip anything, with the keyed stages (tenant,
agent, tool, content) judged as the worker judges them.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import CommandSigner, encode_event
from detectors import DetectorSettings, keyed_detectors, session_detectors
from streams.lab._scenarios import Scenario, in_time_order, overrides, scenario_library
from streams.operator._cli import main
from streams.operator._replay import ReplayReport, replay_lines

KEY = "0123456789abcdef0123456789abcdef"
# Long enough past the last event for a quiet session to meet the stall timer (300 s by default) and the
# wait for other sessions gone quiet with it (120 s).
HORIZON_S = 500


def recording(prefix: str = "t") -> tuple[list[bytes], DetectorSettings, list[Scenario]]:
    library = scenario_library(prefix)
    settings = DetectorSettings.model_validate(overrides(library))
    return [encode_event(e) for e in in_time_order(library)], settings, library


def test_every_runaway_scenario_trips_its_detector_and_no_healthy_session_trips_any() -> None:
    lines, settings, library = recording()
    report = replay_lines(lines, settings, horizon_ms=HORIZON_S * 1000)
    fired: dict[str, list[str]] = {}
    killed = set()
    for verdict, action in report.verdicts:
        fired.setdefault(verdict.session_id, []).append(verdict.detector)
        if action == "killed":
            killed.add(verdict.session_id)
    assert report.dead_letters == []
    covered = set()
    for scenario in library:
        spared = {sid for sid, label in scenario.labels().items() if label == "none"}
        assert not spared & killed, f"{scenario.name} killed {sorted(spared & killed)}"
        got = [d for sid in scenario.sessions for d in fired.get(sid, [])]
        if scenario.detector is None:
            assert got == [], f"{scenario.name} is healthy but tripped {got}"
        else:
            assert scenario.detector in got, f"{scenario.name} did not trip {scenario.detector}: {got}"
            covered.add(scenario.detector)
    every = {a.detector.name for a in session_detectors(settings)} | {
        a.detector.name for a in keyed_detectors(settings)
    }
    assert covered == every


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32))
def test_every_variant_of_the_real_run_patterns_is_judged_as_its_scenario_says(variant: int) -> None:
    # Other wordings, lengths and interleavings of the loops and healthy runs real trials showed.
    library = scenario_library("v", variant=variant)
    settings_ = DetectorSettings.model_validate(overrides(library))
    lines = [encode_event(e) for e in in_time_order(library)]
    report = replay_lines(lines, settings_, horizon_ms=HORIZON_S * 1000)
    fired: dict[str, list[str]] = {}
    killed = {verdict.session_id for verdict, action in report.verdicts if action == "killed"}
    for verdict, _ in report.verdicts:
        fired.setdefault(verdict.session_id, []).append(verdict.detector)
    for scenario in library:
        labels = scenario.labels()
        wrong = sorted(sid for sid, label in labels.items() if (label == "kill") != (sid in killed))
        assert not wrong, f"variant {variant}: {scenario.name} judged wrongly: {wrong}"
        got = [d for sid in scenario.sessions for d in fired.get(sid, [])]
        if scenario.detector is None:
            assert got == [], f"variant {variant}: {scenario.name} is healthy but tripped {got}"
        else:
            assert scenario.detector in got, f"variant {variant}: {scenario.name} tripped {got}"


def test_replay_prints_each_verdict_with_its_evidence_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines, _, library = recording()
    path = tmp_path / "events.jsonl"
    # A line that breaks the contract is reported with its line number and the rest is still judged.
    path.write_bytes(b"\n".join([b'{"kind": "turn.completed"}', *lines]) + b"\n")
    config = tmp_path / "tripwire.yaml"
    config.write_bytes(
        orjson.dumps(
            {"signing_key": KEY, "detectors": {**overrides(library), "monologue": {"mode": "shadow"}}}
        )
    )
    assert main(["replay", str(path), "--config", str(config), "--json", "--horizon-s", str(HORIZON_S)]) == 0
    out = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    *verdicts, summary = out
    assert summary["summary"]["events"] == len(lines)
    (letter,) = summary["summary"]["dead_letters"]
    assert letter["line"] == 1
    assert "schema_version" in letter["reason"]
    by_detector = {v["detector"]: v for v in verdicts}
    by_session = {v["session_id"]: v for v in verdicts}
    monologue = by_detector["monologue"]
    assert (monologue["mode"], monologue["action"]) == ("shadow", "observed")
    loop = by_session["t-runaway-same-call-again"]
    assert loop["action"] == "killed"
    assert loop["failure_class"] == "runaway_execution"
    assert len(loop["event_ids"]) >= 3
    assert loop["window_start_ms"] <= loop["event_time_ms"] <= loop["window_end_ms"]
    assert loop["evidence"]["tool_name"].endswith("web_search")
    assert by_detector["burn_rate"]["action"] == "warned"
    assert by_detector["tool_circuit"]["action"] == "circuit"
    leak = by_detector["memory_leak"]
    assert leak["evidence"]["owner_session_id"].endswith("record-leak-owner")
    assert leak["session_id"].endswith("record-leak-reader")


def test_replay_text_output_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines, _, _ = recording()
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    assert main(["replay", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith(f"{len(lines)} events in ")
    assert "killed   t-runaway-search-fetch-cycle  cyclic_pattern (runaway_execution, enforce)" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("detectors:\n  repeated_tool_call:\n    count: 1\n")
    assert main(["replay", str(path), "--config", str(bad)]) == 2
    assert "detectors.repeated_tool_call.count: 1 is not allowed" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 2


def test_the_same_recording_gives_the_same_verdicts_twice() -> None:
    lines, settings, _ = recording()
    first = replay_lines(lines, settings, horizon_ms=HORIZON_S * 1000)
    second = replay_lines(lines, settings, horizon_ms=HORIZON_S * 1000)
    assert [v.describe() for v, _ in first.verdicts] == [v.describe() for v, _ in second.verdicts]


def test_duplicated_and_reordered_deliveries_change_no_verdict() -> None:
    lines, settings, _ = recording()
    clean = replay_lines(lines, settings, horizon_ms=HORIZON_S * 1000)
    # At-least-once delivery: every tenth event arrives twice, the copy a few events later.
    noisy = list(lines)
    for at in range(len(lines) - 1, 0, -10):
        noisy.insert(min(len(noisy), at + 3), lines[at])
    again = replay_lines(noisy, settings, horizon_ms=HORIZON_S * 1000)
    assert again.duplicates == len(noisy) - len(lines)

    def judged(report: ReplayReport) -> set[tuple[str, str]]:
        return {(v.session_id, v.detector) for v, _ in report.verdicts}

    assert judged(again) == judged(clean)


def test_sessions_recorded_one_after_another_give_the_verdicts_of_time_order() -> None:
    lines, settings, library = recording()
    clean = replay_lines(lines, settings, horizon_ms=HORIZON_S * 1000)
    # The same events as a user may export them: session by session, each in its own order.
    concatenated = [encode_event(e) for scenario in library for e in scenario.events]
    assert concatenated != lines
    again = replay_lines(concatenated, settings, horizon_ms=HORIZON_S * 1000)
    assert sorted(str(v.describe()) for v, _ in again.verdicts) == sorted(
        str(v.describe()) for v, _ in clean.verdicts
    )


def test_a_long_recording_out_of_time_order_is_refused_naming_the_line() -> None:
    from streams import ConfigError
    from streams.operator._replay import event_time_order

    lines, _, _ = recording()
    assert [n for n, _ in event_time_order(lines[:50], limit=10)] == list(range(1, 51))  # in order: streamed
    later = next(
        i
        for i, line in enumerate(lines)
        if orjson.loads(line)["event_time_ms"] > orjson.loads(lines[0])["event_time_ms"]
    )
    backwards = [lines[later], *lines[:later], *lines[later + 1 : 20 + later]][:20]
    with pytest.raises(ConfigError, match=r"line 2: event_time_ms \d+ is [\d.]+ s before an earlier line's"):
        list(event_time_order(backwards, limit=10))
    # Within the limit it is sorted instead, and the lines keep their numbers for the dead letters.
    numbers = [n for n, _ in event_time_order(backwards, limit=100)]
    assert sorted(numbers) == list(range(1, 21))


def test_an_event_time_written_as_a_float_is_dead_lettered_by_worker_and_replay_alike() -> None:
    from streams.worker._pipeline import Pipeline, RawRecord

    lines, settings, _ = recording()
    event = orjson.loads(lines[0])
    event["event_time_ms"] = float(event["event_time_ms"])  # what Python's json writes for 1767225600000.0
    raw = orjson.dumps(event)
    report = replay_lines([raw, *lines[1:3]], settings)
    ((number, reason),) = report.dead_letters
    assert number == 1
    assert "event_time_ms" in reason
    assert "integer" in reason
    pipeline = Pipeline.from_settings(settings, CommandSigner(KEY), lambda: 0, verdicts_topic="v")
    (letter,) = pipeline.judge([RawRecord(event["session_id"].encode(), raw, 0, 0)], {}.get).dead_letters
    assert letter.reason == reason
