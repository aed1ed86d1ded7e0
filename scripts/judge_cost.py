"""Tripwire's own judging cost per event, without any broker: what bounds one worker's throughput.

    .venv/bin/python scripts/judge_cost.py [--events 44000] [--profile]

Pushes the bench's events (every detector and keyed stage on, the bench's budgets) through
`Pipeline.judge` in batches of 256, encodes each changed state as a checkpoint does, packs the stage
records and judges them with `StageJudge`. Prints events/s; `--profile` prints a cProfile by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from agents_contract import CommandSigner
from detectors import DetectorSettings, SessionState, pack_stage_records, wall_clock
from streams.lab._bench import BENCH_DETECTORS, _session_events
from streams.worker._pipeline import Pipeline, RawRecord
from streams.worker._stages import StageJudge

BATCH = 256


def judge_rate(events: int) -> float:
    settings = DetectorSettings.model_validate(BENCH_DETECTORS)
    signer = CommandSigner("k" * 32)
    pipeline = Pipeline.from_settings(settings, signer, wall_clock, verdicts_topic="verdicts")
    stages = StageJudge(settings, signer, wall_clock)
    pairs = [
        (f"load-{s}".encode(), value)
        for s in range(max(1, events // 11))
        for value in _session_events(f"load-{s}", 1, 10)
    ]
    records = [RawRecord(k, v, hash(k) % 4, i, "events") for i, (k, v) in enumerate(pairs)]
    sessions: dict[str, SessionState] = {}
    stage_states: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        result = pipeline.judge(records[i : i + BATCH], sessions.get)
        for key, (state, _) in result.dirty.items():
            sessions[key] = state
            state.to_bytes()
        packed = [RawRecord(k, v, 0, 0, "stages") for k, v in pack_stage_records(result.stage_records)]
        for key, (stage_state, _) in stages.judge(packed, stage_states.get).dirty.items():
            stage_states[key] = stage_state
    return len(records) / (time.perf_counter() - started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=44_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(judge_rate, args.events)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    else:
        print(f"{judge_rate(args.events):,.0f} events/s")
