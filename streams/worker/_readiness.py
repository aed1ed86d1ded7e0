"""Whether the worker is judging: a ready mark that is true, and a rebalance that cannot hang for ever.

A worker is ready once every partition it was assigned has recovered its state and is being read again,
not when the group has merely handed it partitions. Recovery that does not finish within
`worker.recovery_timeout_s` is stuck (seen as Faust waiting for a changelog that did not exist when the
group assigned it): a watchdog thread, which runs whatever the event loop is doing, says so and restarts the
worker in place, which is what an operator would do by hand.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from prometheus_client import Counter, Gauge

log = logging.getLogger("tripwire.worker")

READY = Gauge("tripwire_worker_ready", "1 while every partition of this worker is recovered and judged")
STUCK = Counter("tripwire_recovery_stuck_total", "Rebalances that did not finish in time (worker restarted)")


class Readiness:
    def __init__(self, timeout_s: float, *, restart: bool = True) -> None:
        self.timeout_s = timeout_s
        self._restart = restart
        self._since: float | None = time.monotonic()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        READY.set(0)

    @property
    def is_ready(self) -> bool:
        return self._since is None

    def rebalancing(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
        READY.set(0)

    def ready(self) -> None:
        with self._lock:
            self._since = None
        READY.set(1)

    def stuck_for(self, now: float | None = None) -> float:
        """Seconds the current rebalance has run past the timeout (0 when not stuck)."""
        since = self._since
        if since is None:
            return 0.0
        over = (time.monotonic() if now is None else now) - since - self.timeout_s
        return max(0.0, over)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="tripwire-readiness", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            if self.stuck_for() > 0:
                STUCK.inc()
                log.critical(
                    "rebalance and recovery have not finished in %.0f s (worker.recovery_timeout_s): "
                    "restarting this worker",
                    self.timeout_s,
                )
                if self._restart:
                    logging.shutdown()
                    os.execv(sys.executable, [sys.executable, "-m", "streams", *sys.argv[1:]])
                return
