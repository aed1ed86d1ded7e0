"""Python's cycle collector in a worker: what startup built is frozen, and every pause is measured.

A full collection traces every tracked object the process holds. Modules, Faust's app and the detector
suite are built once and live as long as the process: `gc.freeze()` after startup moves them out of the
collector's reach (reference counting still frees anything of theirs that is dropped). Session states that
wait out their grace are kept as bytes (`_store.LiveStore`), which the collector does not trace either.
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
    """Collect once, freeze what survived (the process's long-lived objects) and start measuring pauses."""
    global _installed
    gc.collect()
    gc.freeze()
    if not _installed:
        _installed = True
        for generation in range(3):
            PAUSE.labels(str(generation))
        gc.callbacks.append(_measure)
