"""`tripwire replay`: the worker's judging code over recorded events, with no broker and no Redis.

Each line of the file is one contract event as an agent publishes it. The lines go through the same
`Pipeline` and `StageJudge` the worker runs (parse, dead-letter, judge, keyed stages, verdicts back to the
session), with the clock following the events' own times, so the timed detectors (deadlines, stalls) fire
where they would have. What would have been a kill or an alert is printed with its evidence instead of
sent: the tool for tuning windows and thresholds on real traffic before switching a detector to enforce.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import ValidationError

from agents_contract import CommandSigner
from detectors import (
    CORRELATED_QUIET,
    DetectorSettings,
    SessionState,
    Verdict,
    pack_stage_records,
)
from streams._config import ConfigError, explain, read_config_file
from streams.worker._pipeline import BatchResult, Pipeline, RawRecord
from streams.worker._stages import StageJudge

_VERDICTS = "replay.verdicts"
# How often (in event time) the timed detectors look at the sessions, like the worker's timer.
_TICK_MS = 1_000


@dataclass
class ReplayReport:
    events: int = 0
    duplicates: int = 0
    # (line number, reason)
    dead_letters: list[tuple[int, str]] = field(default_factory=list)
    # (verdict, what the worker would have done: killed / warned / observed, agent_id)
    verdicts: list[tuple[Verdict, str]] = field(default_factory=list)
    sessions: int = 0
    session_ids: set[str] = field(default_factory=set)


def detector_settings(path: Path | None) -> DetectorSettings:
    """The `detectors` section of a worker config file (defaults without one); no other key is needed."""
    if path is None:
        return DetectorSettings()
    data = read_config_file(path).get("detectors") or {}
    try:
        return DetectorSettings.model_validate(data)
    except ValidationError as exc:
        message = explain(exc, source=str(path))
        raise ConfigError(message.replace("\n  ", "\n  detectors.")) from None


class Replay:
    """Judges records in order, as one worker owning every partition would."""

    def __init__(self, settings: DetectorSettings) -> None:
        self.now_ms = 0
        signer = CommandSigner(secrets.token_bytes(32))
        self.pipeline = Pipeline.from_settings(settings, signer, self._clock, verdicts_topic=_VERDICTS)
        self.stages = StageJudge(settings, signer, self._clock)
        self.states: dict[str, SessionState] = {}
        self.stage_states: dict[str, dict[str, Any]] = {}
        self.report = ReplayReport()
        self._ticked_ms = 0

    def _clock(self) -> int:
        return self.now_ms

    def feed(self, lines: Iterable[tuple[int, bytes]]) -> ReplayReport:
        """Judge (line number, line) pairs in the order given."""
        for number, line in lines:
            if not line.strip():
                continue
            time_ms, key = _peek(line)
            if time_ms is not None and time_ms > self.now_ms:
                self.advance(time_ms)
            self._judge([RawRecord(key, line, 0, number)])
        return self.report

    def advance(self, now_ms: int) -> None:
        """Move the clock; the timed detectors run every second of event time, as in the worker."""
        self.now_ms = now_ms
        if now_ms - self._ticked_ms >= _TICK_MS:
            self._ticked_ms = now_ms
            self._staged(self.pipeline.expire(list(self.states.values()), now_ms))

    def _judge(self, records: list[RawRecord]) -> None:
        self._staged(self.pipeline.judge(records, self.states.get))

    def _staged(self, result: BatchResult) -> None:
        """Record a result and judge its keyed-stage records, whose verdicts come back to the sessions."""
        self._record(result)
        if result.stage_records:
            raw = [RawRecord(key, value, 0, 0) for key, value in pack_stage_records(result.stage_records)]
            staged = self.stages.judge(raw, self.stage_states.get)
            for key, (state, _) in staged.dirty.items():
                self.stage_states[key] = state
            for verdict in staged.given:
                if verdict.evidence.get("scope") == "tool":
                    self.report.verdicts.append((verdict, _action(verdict, tool=True)))
            if staged.verdicts:
                self._judge([RawRecord(k, v, 0, 0, _VERDICTS) for k, v in staged.verdicts])

    def _record(self, result: BatchResult) -> None:
        self.report.events += result.events
        self.report.duplicates += result.duplicates
        for state, _ in result.dirty.values():
            self.states[state.session_id] = state
            self.report.session_ids.add(state.session_id)
        self.report.sessions = len(self.states)
        for letter in result.dead_letters:
            self.report.dead_letters.append((letter.record.offset, letter.reason))
        for verdict in result.verdicts:
            self.report.verdicts.append((verdict, _action(verdict)))


def _action(verdict: Verdict, *, tool: bool = False) -> str:
    if verdict.mode == "shadow":
        return "observed"
    if verdict.detector == CORRELATED_QUIET:
        return "held"  # one of many sessions gone quiet together: its stall kill waits
    if verdict.kills:
        return "circuit" if tool else "killed"
    return "warned"


def _peek(line: bytes) -> tuple[int | None, bytes | None]:
    """The line's event time and its session id as the record key an agent would give it; (None, None)
    for a line that is not a JSON object (the pipeline dead-letters it with the reason)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    time_ms, session_id = data.get("event_time_ms"), data.get("session_id")
    return (
        time_ms if isinstance(time_ms, int) and not isinstance(time_ms, bool) and time_ms >= 0 else None,
        session_id.encode() if isinstance(session_id, str) else None,
    )


# Recordings up to this many lines are put in event-time order in memory; longer ones must come in order.
MAX_SORTED_LINES: Final = 1_000_000


def event_time_order(lines: Iterable[bytes], *, limit: int = MAX_SORTED_LINES) -> Iterator[tuple[int, bytes]]:
    """The recording's lines, numbered from 1 as in the file, in event-time order (each line's place among
    equal times kept).

    The replay's clock is the newest event time it has read, so a recording of sessions one after another
    (each in its own order) would judge a later session's early events after the clock had passed them.
    Up to `limit` lines are sorted in memory; a longer recording is replayed as it comes and refused, naming
    the line, at the first event older than one before it (sort it by `event_time_ms` first). A line
    without an event time keeps the time of the line before it (it is dead-lettered where it stands)."""
    head: list[tuple[int, int, bytes]] = []
    numbered = enumerate(lines, 1)
    last = 0
    for number, line in numbered:
        time_ms = _peek(line)[0] if line.strip() else None
        last = time_ms if time_ms is not None else last
        head.append((last, number, line))
        if len(head) > limit:
            break
    else:
        head.sort(key=lambda item: item[0])  # stable: equal times keep their order
        yield from ((number, line) for _, number, line in head)
        return
    newest = 0
    rest = ((_peek(line)[0] or 0, number, line) for number, line in numbered)
    for time_ms, number, line in itertools.chain(head, rest):
        if time_ms and time_ms < newest:
            raise ConfigError(
                f"line {number}: event_time_ms {time_ms} is {(newest - time_ms) / 1000:g} s before an "
                f"earlier line's; a recording of more than {limit:,} lines must be in event-time order "
                "(sort it by event_time_ms first)"
            )
        newest = max(newest, time_ms)
        yield number, line


def replay_lines(lines: Iterable[bytes], settings: DetectorSettings, *, horizon_ms: int = 0) -> ReplayReport:
    replay = Replay(settings)
    replay.feed(event_time_order(lines))
    if horizon_ms:
        # Let the clock run on past the last event, so sessions that went quiet meet their timers.
        replay.advance(replay.now_ms + horizon_ms)
    return replay.report


def read_lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as f:
            yield from f
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def render(report: ReplayReport, *, json_output: bool) -> str:
    if json_output:
        lines = [
            orjson.dumps({"action": action, **verdict.describe()}).decode()
            for verdict, action in report.verdicts
        ]
        summary = {
            "summary": {
                "events": report.events,
                "sessions": report.sessions,
                "duplicates": report.duplicates,
                "dead_letters": [{"line": n, "reason": r} for n, r in report.dead_letters],
                "verdicts": len(report.verdicts),
            }
        }
        return "\n".join([*lines, orjson.dumps(summary).decode()])
    out = [
        f"{report.events} events in {report.sessions} sessions; {report.duplicates} duplicates dropped; "
        f"{len(report.dead_letters)} dead letters; {len(report.verdicts)} verdicts"
    ]
    for line, reason in report.dead_letters:
        out.append(f"  line {line}: dead letter: {reason}")
    for verdict, action in report.verdicts:
        out.append(
            f"  {action:<8} {verdict.session_id}  {verdict.detector} ({verdict.failure_class.value}, "
            f"{verdict.mode}): {verdict.reason}"
        )
        window = f"window {verdict.window_start_ms}..{verdict.window_end_ms}"
        out.append(f"           {window}; events {', '.join(verdict.event_ids[-6:])}")
    return "\n".join(out)


@dataclass
class Score:
    """How a config did on labelled sessions: each labelled `kill` session killed or missed, each `none`
    session left alone or killed (a false kill), and which detector killed first."""

    loops: int = 0
    healthy: int = 0
    caught: list[tuple[str, str]] = field(default_factory=list)  # (session, detector)
    missed: list[str] = field(default_factory=list)
    false_kills: list[tuple[str, str]] = field(default_factory=list)  # (session, detector)
    unlabelled: int = 0

    @property
    def recall(self) -> float:
        return len(self.caught) / self.loops if self.loops else 1.0

    @property
    def false_kill_rate(self) -> float:
        return len(self.false_kills) / self.healthy if self.healthy else 0.0

    def by_detector(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for rows, column in ((self.caught, "caught"), (self.false_kills, "false_kills")):
            for _, detector in rows:
                counts = table.setdefault(detector, {"caught": 0, "false_kills": 0})
                counts[column] += 1
        return dict(sorted(table.items()))

    def describe(self) -> dict[str, Any]:
        return {
            "loops": self.loops,
            "healthy": self.healthy,
            "recall": round(self.recall, 4),
            "false_kill_rate": round(self.false_kill_rate, 4),
            "by_detector": self.by_detector(),
            "missed": self.missed,
            "false_kills": [{"session_id": s, "detector": d} for s, d in self.false_kills],
            "unlabelled_sessions": self.unlabelled,
        }


def read_expectations(path: Path) -> dict[str, bool]:
    """`{session_id: "kill" | "none"}` from a JSON file, as {session_id: should be killed}."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a JSON object of session id -> "kill" or "none"')
    expected: dict[str, bool] = {}
    for session, label in data.items():
        if label not in ("kill", "none"):
            raise ConfigError(f'{path}: session {session!r}: {label!r} is not allowed; use "kill" or "none"')
        expected[session] = label == "kill"
    return expected


def score(report: ReplayReport, expected: dict[str, bool]) -> Score:
    """Score a replay against labels: a session counts as killed by the first verdict that would have
    killed it (enforce mode)."""
    killer: dict[str, str] = {}
    for verdict, action in report.verdicts:
        if action == "killed":
            killer.setdefault(verdict.session_id, verdict.detector)
    result = Score()
    for session, loop in expected.items():
        detector = killer.get(session)
        if loop:
            result.loops += 1
            if detector is None:
                result.missed.append(session)
            else:
                result.caught.append((session, detector))
        else:
            result.healthy += 1
            if detector is not None:
                result.false_kills.append((session, detector))
    result.unlabelled = len(report.session_ids - expected.keys())
    return result


def render_score(result: Score) -> str:
    lines = [
        f"{len(result.caught)} of {result.loops} loops killed (recall {result.recall:.1%}); "
        f"{len(result.false_kills)} of {result.healthy} healthy sessions killed "
        f"(false kills {result.false_kill_rate:.1%}); {result.unlabelled} sessions unlabelled",
        f"  {'detector':<28} {'caught':>7} {'false kills':>12}",
    ]
    for detector, counts in result.by_detector().items():
        lines.append(f"  {detector:<28} {counts['caught']:>7} {counts['false_kills']:>12}")
    lines.extend(f"  missed      {session}" for session in result.missed)
    lines.extend(f"  false kill  {session} by {detector}" for session, detector in result.false_kills)
    return "\n".join(lines)
