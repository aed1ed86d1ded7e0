"""Which call a tool result answers: the session's open tool calls, shared by the detectors that judge a
result by the call it came from (the same call giving the same result, the same call failing again).

A `tool.returned` names its call only by `call_id`; the call's tool and canonical arguments came with the
`tool.called` before it. The session keeps the last few calls' ids and argument hashes (CRC-32 each) in one
slot, whichever detector sees the call first, so a result is matched to its call without any content.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from agents_contract import ToolCalled, ToolReturned
from detectors._state import SessionState
from detectors._window import packed_id

# Calls remembered per session: results come back soon after their calls, a few calls may be in flight.
_OPEN: Final = 8
_SLOT: Final = "open_calls"
# Each call is 16 hex digits in one string: its call id's hash, then its tool and arguments' hash (a list of
# pairs would take half as much again in every checkpoint).
_ENTRY: Final = 16


def crc(*parts: str) -> int:
    return zlib.crc32("\x00".join(parts).encode("utf-8", "surrogatepass"))


def _calls(state: SessionState) -> str:
    calls = state.slots.get(_SLOT)
    # A state checkpointed by an earlier release kept a list here: its few open calls are let go.
    return calls if isinstance(calls, str) else ""


def note_call(state: SessionState, event: ToolCalled) -> int:
    """Remember the call (once, whoever asks first); its hash of tool and canonical arguments."""
    calls = _calls(state)
    mark = f"{crc(event.call_id):08x}"
    if calls[-_ENTRY:-8] == mark:
        return int(calls[-8:], 16)
    call = crc(event.tool_name, event.args_digest)
    state.slots[_SLOT] = (calls + f"{mark}{call:08x}")[-_ENTRY * _OPEN :]
    return call


def call_of(state: SessionState, event: ToolReturned) -> int | None:
    """The hash of the call this result answers, when the session saw the call."""
    calls = _calls(state)
    mark = f"{crc(event.call_id):08x}"
    for at in range(len(calls) - _ENTRY, -1, -_ENTRY):
        if calls[at : at + 8] == mark:
            return int(calls[at + 8 : at + _ENTRY], 16)
    return None


# Calls whose last result is remembered, to tell the same call giving the same result again.
_RESULTS: Final = 8
_RESULTS_SLOT: Final = "call_results"


def same_result_run(state: SessionState, event: ToolReturned, call: int, result: int) -> list[Any]:
    """The run of `call` answering with `result` ([result hash, times in a row, first time since the origin,
    ids, the last result's hash of its event id]) after this result; counted once per event, whichever
    detector asks first. Another result of the call starts its run over; other calls do not break it."""
    table: dict[str, list[Any]] | None = state.slots.get(_RESULTS_SLOT)
    if table is None:
        table = state.slots[_RESULTS_SLOT] = {}
    key = str(call)
    seen = crc(event.event_id)
    run = table.pop(key, None)
    t = event.event_time_ms - state.origin_ms
    if run is None or run[0] != result:
        run = [result, 0, t, [], 0]
    table[key] = run
    if len(table) > _RESULTS:
        del table[next(iter(table))]
    if run[4] != seen:
        run[4] = seen
        run[1] += 1
        run[3].append(packed_id(event.event_id))
        del run[3][:-4]
    return run
