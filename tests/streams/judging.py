"""The worker's whole judging path without a broker, for the poison and fuzz tests: parse, judge, keyed stages
and their verdicts back to the session, every command and alert built and encoded, every dead letter as the
DLQ would get it, every state as its changelog would. Only the produce calls are missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from agents_contract import CommandSigner, KillCommand, encode_command, parse_command
from detectors import DetectorSettings, SessionState, pack_stage_records
from sinks import Alert
from streams.worker._dlq import dead_letter
from streams.worker._pipeline import BatchResult, DeadLetter, Pipeline, RawRecord
from streams.worker._stages import StageJudge

SIGNER = CommandSigner("fuzz-key-" + "k" * 32)
EVENTS = "agent.events"
VERDICTS = "tripwire.verdicts"


@dataclass
class Clock:
    now_ms: int = 1_767_225_600_000

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Judged:
    kills: list[KillCommand] = field(default_factory=list)
    circuits: list[KillCommand] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def killed(self) -> dict[str, str]:
        return {k.target: k.detector for k in self.kills}


class JudgingPath:
    def __init__(self, settings: DetectorSettings | None = None, clock: Clock | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self.clock = clock or Clock()
        self.pipeline = Pipeline.from_settings(self.settings, SIGNER, self.clock, verdicts_topic=VERDICTS)
        self.stages = StageJudge(self.settings, SIGNER, self.clock)
        self.states: dict[str, SessionState] = {}
        self.stage_states: dict[str, dict[str, Any]] = {}
        self.judged = Judged()
        self.largest_state = 0
        self.largest_stage_state = 0
        self._offset = 0

    def send(self, value: bytes | None, key: bytes | None = None, *, topic: str = EVENTS) -> None:
        self._offset += 1
        self._judge([RawRecord(key, value, 0, self._offset, topic)])

    def tick(self, advance_ms: int = 1_000) -> None:
        self.clock.now_ms += advance_ms
        self._staged(self.pipeline.expire(list(self.states.values()), self.clock.now_ms))

    def _judge(self, records: list[RawRecord]) -> None:
        self._staged(self.pipeline.judge(records, self.states.get))

    def _staged(self, result: BatchResult) -> None:
        self._record(result)
        if not result.stage_records:
            return
        raw = [RawRecord(k, v, 0, 0) for k, v in pack_stage_records(result.stage_records)]
        staged = self.stages.judge(raw, self.stage_states.get)
        for key, (state, _) in staged.dirty.items():
            self.stage_states[key] = state
            self.largest_stage_state = max(self.largest_stage_state, len(orjson.dumps(state)))
        self._sent(staged.commands, staged.alerts, self.judged.circuits)
        if staged.verdicts:
            self._judge([RawRecord(k, v, 0, 0, VERDICTS) for k, v in staged.verdicts])

    def _sent(self, commands: list[KillCommand], alerts: list[Alert], into: list[KillCommand]) -> None:
        for command in commands:
            # What the worker sends and the agent reads back: it must build, encode, parse and verify.
            assert parse_command(encode_command(command)) == command
            assert SIGNER.verify(command)
            into.append(command)
        for alert in alerts:
            assert Alert.from_bytes(alert.to_bytes()) == alert
            self.judged.alerts.append(alert)

    def _record(self, result: BatchResult) -> None:
        self._sent(result.kills, result.alerts, self.judged.kills)
        for letter in result.dead_letters:
            record = dead_letter(letter, source_topic=EVENTS)
            assert len(record.value) < 4_096
            self.judged.dead_letters.append(letter)
        for state, _ in result.dirty.values():
            raw = state.to_bytes()
            assert SessionState.from_bytes(raw).to_bytes() == raw
            self.largest_state = max(self.largest_state, len(raw))
            self.states[state.session_id] = state
