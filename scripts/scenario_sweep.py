"""Score the default config on many seeded variants of the scenario library: every loop killed, no healthy
run killed. `python scripts/scenario_sweep.py FIRST LAST` replays variants FIRST..LAST-1 (about 1 s each)
and prints the variants judged wrongly, then the totals."""

from __future__ import annotations

import sys

from agents_contract import encode_event
from detectors import DetectorSettings
from streams.lab._scenarios import in_time_order, overrides, scenario_library
from streams.operator._replay import replay_lines, score

# Past the last event: the stall timer (300 s) and its wait for other sessions gone quiet (120 s).
HORIZON_MS = 500_000


def main(first: int, last: int) -> int:
    wrong = loops = healthy = 0
    for variant in range(first, last):
        library = scenario_library("v", variant=variant)
        settings = DetectorSettings.model_validate(overrides(library))
        report = replay_lines(
            [encode_event(e) for e in in_time_order(library)], settings, horizon_ms=HORIZON_MS
        )
        labels = {sid: label == "kill" for s in library for sid, label in s.labels().items()}
        result = score(report, labels)
        loops, healthy = loops + result.loops, healthy + result.healthy
        if result.missed or result.false_kills:
            wrong += 1
            print(f"variant {variant}: missed {result.missed}, false kills {result.false_kills}")
    print(f"{last - first} variants, {wrong} judged wrongly; {loops} loops, {healthy} healthy sessions")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
