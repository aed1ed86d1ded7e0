"""Python's cycle collector in a worker: what startup built is frozen, and every pause is measured.

A full collection traces every tracked object the process holds. Modules, Faust's app and the detector
suite are built once and live as long as the process: `gc.freeze()` after startup moves them out of the
collector's reach (reference counting still frees anything of theirs that is dropped). Session states that
wait out their grace are kept as bytes (`_store.LiveStore`), which the collector does not trace either.
And the youngest generation is collected every 10,000 net allocations instead of Python's 700: judging
one event allocates dozens of short-lived objects (the parsed event, its verdict lists, the records out),
nearly all freed by reference counting before any collection, so collecting them 14 times less often
saves the tracing of the few that live a batch long. `scripts/bench-kafka.sh .venv/bin/python --events
100000 --kills 100 --flood 2000`, same code otherwise, in one hour: 23,995 and 23,181 ev/s against 21,090
at Python's default, kill latency p99 21.4 and 13.0 ms against 21.8 ms; 20,000 gave no more (23,165 and
23,805) and longer tails (p99 23.5 and 34.6 ms). The longest pause seen was 78 ms, a generation-1
collection while 100,000 fetched records of a backlog waited in the intake.

`tripwire_gc_pause_seconds` says, per generation, how long the collector held the event loop: a kill
latency tail that lines up with generation 2 pauses is the heap, not the broker.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

PAUSE = Histogram(
    "tripwire_gc_pause_seconds",
    "Pauses of Python's cycle collector in this process, by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# Net allocations between collections of the youngest generation; the older two keep Python's defaults.
YOUNG_THRESHOLD = 10_000

_started: dict[int, float] = {}
_installed = False


def _measure(phase: str, info: dict[str, Any]) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
        return
    began = _started.pop(generation, None)
    if began is not None:
        PAUSE.labels(str(generation)).observe(time.perf_counter() - began)


def settle_startup() -> None:
    """Collect once, freeze what survived (the process's long-lived objects), collect the young generation
    less often, and start measuring pauses."""
    global _installed
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    if not _installed:
        _installed = True
        for generation in range(3):
            PAUSE.labels(str(generation))
        gc.callbacks.append(_measure)
