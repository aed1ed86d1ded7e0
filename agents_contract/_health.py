"""What the SDK tells its agent process about Tripwire's reachability: a few Prometheus series and a
`Health` object (for code that does not scrape).

An outage of Tripwire (its broker, its Redis) must not take the agent down: by default the SDK keeps the
agent working, buffers its events and honours kills through the fence where Redis still answers, and says
so here and in one log line per change. `fail_closed` refuses guarded calls instead while the broker is
unreachable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter, Gauge

log = logging.getLogger("tripwire.sdk")

OnOutage = Literal["keep_working", "fail_closed"]

BROKER_UP = Gauge("tripwire_sdk_broker_reachable", "1 while the SDK can publish to Tripwire's broker")
REDIS_UP = Gauge("tripwire_sdk_redis_reachable", "1 while the SDK's last fence lookup answered")
BUFFERED = Gauge("tripwire_sdk_events_buffered", "Events queued in the SDK, not yet on the broker")
DROPPED = Counter(
    "tripwire_sdk_events_dropped_total", "Events dropped, oldest first, because the buffer was full"
)
OUTAGES = Counter("tripwire_sdk_outages_total", "Times the SDK lost a Tripwire dependency", ["dependency"])
REFUSED = Counter(
    "tripwire_sdk_calls_refused_unavailable_total", "Guarded calls refused because Tripwire was unreachable"
)
COMMANDS_REJECTED = Counter(
    "tripwire_sdk_commands_rejected_total",
    "Control commands the SDK did not obey: forged (not verifying), expired, stale_epoch (replayed from "
    "another epoch of the session)",
    ["reason"],
)


@dataclass
class Health:
    """The guard's view of Tripwire: reachability, and what the event buffer holds and has dropped."""

    on_outage: OnOutage = "keep_working"
    broker_reachable: bool = False
    redis_reachable: bool = False
    buffered: int = 0
    dropped: int = 0
    outages: int = 0
    # When the broker was last found unreachable (monotonic seconds), for the log line on recovery.
    _down_since: float | None = field(default=None, repr=False)
    _redis_lost: bool = field(default=False, repr=False)

    def broker_lost(self, why: object) -> None:
        if not self.broker_reachable and self._down_since is not None:
            return
        self.broker_reachable = False
        self._down_since = time.monotonic()
        self.outages += 1
        BROKER_UP.set(0)
        OUTAGES.labels("broker").inc()
        what = "guarded calls are refused" if self.on_outage == "fail_closed" else "the agent keeps working"
        log.warning(
            "Tripwire's broker is unreachable (%s): events are buffered and kills honoured through the fence "
            "where Redis answers; %s",
            why,
            what,
        )

    def broker_back(self) -> None:
        if self.broker_reachable:
            return
        down = None if self._down_since is None else time.monotonic() - self._down_since
        self.broker_reachable = True
        self._down_since = None
        BROKER_UP.set(1)
        if down is not None:
            log.warning(
                "Tripwire's broker is reachable again after %.1f s; sending %d buffered events",
                down,
                self.buffered,
            )

    def redis(self, reachable: bool, why: object = None) -> None:
        if reachable == self.redis_reachable:
            return
        self.redis_reachable = reachable
        REDIS_UP.set(1 if reachable else 0)
        if reachable:
            if self._redis_lost:
                log.warning("Tripwire's Redis (the fence) is reachable again")
        else:
            self._redis_lost = True
            self.outages += 1
            OUTAGES.labels("redis").inc()
            log.warning(
                "Tripwire's Redis (the fence) is unreachable (%s): kills arrive only by the broker", why
            )

    def __post_init__(self) -> None:
        # Read when scraped, not written per event: the outbox changes it twice per event.
        BUFFERED.set_function(lambda: self.buffered)

    def queued(self, count: int) -> None:
        self.buffered = count

    def drop(self, count: int = 1) -> None:
        self.dropped += count
        DROPPED.inc(count)
