"""Event-time windows kept inside a session's state: plain lists, oldest first, bounded by their detector.

An entry is a list whose first item is its event time in milliseconds. Windows follow event time, not
arrival: `slide` drops what fell out of the window ending at the session's newest event, so the same events
give the same verdicts in the worker and in `tripwire replay`, however late they are read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from detectors._state import SessionState

_PACKED = "~"  # not a character of event ids (agents_contract's id pattern), so a packed id is unambiguous


_URLSAFE = bytes.maketrans(b"+/", b"-_")


# The last id packed and its packing: several detectors pack the id of the event they all observe.
_last: tuple[str, str] = ("", "")


def packed_id(event_id: str) -> str:
    """An event id as windows keep it: the SDK's ids (32 lowercase hex digits) in 23 characters instead of
    32, any other id as it is. `unpacked_ids` gives them back."""
    global _last
    if len(event_id) != 32:
        return event_id
    if _last[0] == event_id:
        return _last[1]
    packed = _pack(event_id)
    _last = (event_id, packed)
    return packed


def _pack(event_id: str) -> str:
    try:
        raw = bytes.fromhex(event_id)
    except ValueError:
        return event_id
    # `fromhex` also takes upper case and skips spaces: only an id that comes back the same is packed.
    if raw.hex() != event_id:
        return event_id
    encoded = binascii.b2a_base64(raw, newline=False)
    return _PACKED + encoded[:22].translate(_URLSAFE).decode()


def unpacked_ids(ids: Iterable[str]) -> list[str]:
    """The event ids that `packed_id` kept, as the agents sent them."""
    return [base64.urlsafe_b64decode(kept[1:] + "==").hex() if kept[:1] == _PACKED else kept for kept in ids]


def slot(state: SessionState, name: str, default: Any) -> Any:
    """The detector's own part of the session state, created on first use."""
    value = state.slots.get(name)
    if value is None:
        value = state.slots[name] = default
    return value


def slide(entries: list[list[Any]], end_ms: int, span_ms: int, *, limit: int | None = None) -> None:
    """Drop the entries older than `span_ms` before `end_ms`, and the oldest beyond `limit`."""
    start = end_ms - span_ms
    drop = 0
    while drop < len(entries) and entries[drop][0] < start:
        drop += 1
    if limit is not None and len(entries) - drop > limit:
        drop = len(entries) - limit
    if drop:
        del entries[:drop]


def tally(buckets: list[list[Any]], start: int, *amounts: float) -> None:
    """Add `amounts` to the bucket `[start, *totals]` (rounded to 6 places), created in time order if new:
    a window kept as a fixed number of buckets, however many events fall into it."""
    at = len(buckets)
    while at and buckets[at - 1][0] > start:
        at -= 1
    if at and buckets[at - 1][0] == start:
        bucket = buckets[at - 1]
        if len(amounts) == 1:  # the usual case (spend), without the loop
            bucket[1] = round(bucket[1] + amounts[0], 6)
            return
        for i, amount in enumerate(amounts, 1):
            bucket[i] = round(bucket[i] + amount, 6)
        return
    buckets.insert(at, [start, *(round(amount, 6) for amount in amounts)])


def insert(entries: list[list[Any]], entry: list[Any]) -> None:
    """Add an entry in event-time order (an out-of-order event within the lateness goes where it belongs)."""
    at = len(entries)
    while at and entries[at - 1][0] > entry[0]:
        at -= 1
    entries.insert(at, entry)
