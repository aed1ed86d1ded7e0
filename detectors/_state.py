"""Per-session state: what the detectors know about one session, small enough to keep for every session.

The worker keeps one `SessionState` per active session in memory and checkpoints it to a changelog, so the
state must stay compact (no event history: running totals, plus each detector's own bounded window in
`slots`) and serialise without a schema library. Windowed detectors keep event times relative to the
session's `origin_ms` (a few digits instead of thirteen, in memory and in the changelog) and event ids
packed (`detectors._window.packed_id`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from agents_contract import AgentEvent, TurnCompleted

_WINDOW_BITS: Final = 64
_WINDOW_MASK: Final = (1 << _WINDOW_BITS) - 1
_FORMAT: Final = 6
# Recent event ids per session (crc32, 8 hex digits each, in one string to keep the checkpoint small): a
# producer that re-sends an event under a new seq is still caught.
_RECENT_IDS: Final = 8
# Agent ids longer than this are kept in the replay filter as a prefix and a 48-bit digest.
_FILTER_KEY_CHARS: Final = 28


def _filter_key(agent_id: str) -> str:
    if len(agent_id) <= _FILTER_KEY_CHARS:
        return agent_id
    tag = hashlib.blake2b(agent_id.encode(), digest_size=6).hexdigest()
    return f"{agent_id[:15]}~{tag}"


@dataclass(slots=True)
class SessionState:
    session_id: str
    tenant_id: str = ""
    user_id: str = ""
    steps: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    events: int = 0
    first_event_ms: int = 0
    last_event_ms: int = 0
    # The detector whose verdict killed the session; a killed session is not judged again.
    killed_by: str | None = None
    # Replay filter per emitting agent: [highest seq seen, bitmap of the 64 seqs below it]; at most
    # `max_agents` entries (the suite's intake limit).
    seen: dict[str, list[int]] = field(default_factory=dict)
    # The kill's life after it was issued (wall-clock ms, 0 = not yet): the worker escalates a kill that no
    # agent acknowledges in time, once.
    kill_issued_ms: int = 0
    acked_ms: int = 0
    escalated_ms: int = 0
    # The events partition the session lives on, so a timer can checkpoint it without an event in hand.
    partition: int = -1
    # Each detector's own window, under its name: small JSON-able lists, bounded by the detector.
    slots: dict[str, Any] = field(default_factory=dict)
    # Detectors that already gave a verdict for this session (warn and shadow verdicts are given once).
    fired: list[str] = field(default_factory=list)
    # The session ended (session.ended seen): timers leave it alone.
    ended: bool = False
    # When (by the suite's clock) the session's newest event was judged: a worker catching up on a backlog
    # hears from a session later than its events happened, and a session still being heard is not quiet.
    heard_ms: int = 0
    # crc32 of the session's most recent event ids as hex, newest last (at most _RECENT_IDS).
    recent_ids: str = ""
    # The time of the session's first accepted event, fixed from then on: detector windows keep event times
    # relative to it (`event_time_ms - origin_ms`), a few digits instead of thirteen.
    origin_ms: int = 0
    # Agents of the session that said session.started and not yet session.ended: a multi-agent session ends
    # when its last agent has (a helper that finished early does not end it for its team).
    open_agents: int = 0
    # Not checkpointed: set by the suite for the event being judged when it is older than the session's
    # newest event by more than the allowed lateness, so windowed detectors leave it out.
    late: bool = False

    @property
    def awaiting_ack(self) -> bool:
        return self.killed_by is not None and not self.acked_ms and not self.escalated_ms

    def first_verdict(self, detector: str) -> bool:
        """True the first time `detector` gives a verdict on this session (recorded); False after."""
        if detector in self.fired:
            return False
        self.fired.append(detector)
        return True

    def accept(
        self, agent_id: str, seq: int, event_id: str = "", *, max_agents: int = 64, max_jump: int = 2**40
    ) -> bool:
        """True the first time an event is seen; False for a replay (the same (agent_id, seq), one too far
        behind to tell, or an event_id seen among the session's recent ones).

        A seq more than `max_jump` away from the emitter's newest, either way, starts a new epoch for the
        emitter rather than becoming (or hiding under) its high mark: one absurd seq must not turn every later
        event of the agent into a "replay". Past `max_agents` emitters, new ones are deduplicated by
        event_id alone, so no stream of invented agent ids grows the filter."""
        if event_id:
            mark = f"{zlib.crc32(event_id.encode()):08x}"
            recent = self.recent_ids
            # Marks are 8 characters each: a match that straddles two of them is no match.
            at = recent.find(mark)
            while at >= 0:
                if not at & 7:
                    return False
                at = recent.find(mark, at + 1)
        key = agent_id if len(agent_id) <= _FILTER_KEY_CHARS else _filter_key(agent_id)
        window = self.seen.get(key)
        if window is None:
            if len(self.seen) < max_agents:
                self.seen[key] = [seq, 1]
            fresh = True
        else:
            fresh = self._advance(window, seq, max_jump)
        if fresh and event_id:
            self.recent_ids = (self.recent_ids + mark)[-8 * _RECENT_IDS :]
        return fresh

    @staticmethod
    def _advance(window: list[int], seq: int, max_jump: int) -> bool:
        top, mask = window
        if seq > top + max_jump or seq < top - max_jump:
            window[0], window[1] = seq, 1
            return True
        if seq > top:
            shift = seq - top
            window[0] = seq
            window[1] = ((mask << shift) | 1) & _WINDOW_MASK if shift < _WINDOW_BITS else 1
            return True
        behind = top - seq
        if behind >= _WINDOW_BITS or mask >> behind & 1:
            return False
        window[1] = mask | (1 << behind)
        return True

    def apply(self, event: AgentEvent) -> None:
        """Account one accepted event: steps are LLM turns and tool calls begun; usage comes with turns."""
        t = event.event_time_ms
        if not self.events:
            self.origin_ms = t
        self.events += 1
        kind = event.kind
        if kind == "session.started":
            self.open_agents += 1
            self.ended = False
        elif kind == "session.ended":
            # Events from producers that never said session.started end the session at once, as before.
            self.open_agents = max(0, self.open_agents - 1)
            self.ended = self.open_agents == 0
        if not self.first_event_ms or t < self.first_event_ms:
            self.first_event_ms = t
        if t > self.last_event_ms:
            self.last_event_ms = t
        if not self.tenant_id:
            self.tenant_id, self.user_id = event.tenant_id, event.user_id
        if kind == "turn.started" or kind == "tool.called":
            self.steps += 1
        elif isinstance(event, TurnCompleted):
            self.tokens += event.input_tokens + event.output_tokens
            self.cost_usd += event.cost_usd

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            [
                _FORMAT,
                self.session_id,
                self.tenant_id,
                self.user_id,
                self.steps,
                self.tokens,
                self.cost_usd,
                self.events,
                self.first_event_ms,
                self.last_event_ms,
                self.killed_by,
                self.seen,
                self.kill_issued_ms,
                self.acked_ms,
                self.escalated_ms,
                self.partition,
                self.slots,
                self.fired,
                self.ended,
                self.heard_ms,
                self.recent_ids,
                self.origin_ms,
                self.open_agents,
            ]
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionState:
        fmt, *fields = orjson.loads(raw)
        if fmt not in (1, 2, 3, 4, 5, _FORMAT):
            raise ValueError(f"session state format {fmt} is unknown to this version (it reads 1-{_FORMAT})")
        # Each format appends fields to the one before (2: the kill's acknowledgement, 3: detector windows,
        # 4: recent event ids, 5: the origin of window times, 6: agents still attached), so an older record
        # is the newer one with defaults for the fields it lacks.
        state = cls(*fields)
        if fmt < 4:  # the replay filter kept long agent ids whole before format 4
            state.seen = {_filter_key(k): v for k, v in state.seen.items()}
        # Before format 5 windows held absolute times: an origin of 0 reads them as they are.
        return state
