"""What the dead-letter topic keeps of a bad record: enough to find and fix the producer, no raw content.

A record that breaks the contract may hold anything, a user's prompt in an extra field included, and
Tripwire promises to store no raw user content. So by default the dead letter is a small JSON document: the
reason, where the record came from (topic, partition, offset), its size, a SHA-256 of its bytes (to match
it against the producer's own logs) and its shape (which fields, of which JSON kinds), never the values.
An operator debugging a producer can turn on raw copies (`worker.dlq_raw`), which go to a topic of their
own with a short retention, cut to a bounded prefix.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from agents_contract import MAX_EVENT_BYTES, clip
from streams.worker._pipeline import DeadLetter

FORMAT: Final = "tripwire.dead_letter/1"
_MAX_FIELDS: Final = 32
_MAX_KEY_BYTES: Final = 128


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def shape_of(raw: bytes) -> dict[str, Any]:
    """The structure of a record without its values: JSON kind, and for an object its field names (cut to
    64 characters) with the kind of each."""
    if len(raw) > MAX_EVENT_BYTES:
        return {"kind": "unparsed", "why": f"over {MAX_EVENT_BYTES} bytes"}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            raw.decode()
            return {"kind": "text"}
        except UnicodeDecodeError:
            return {"kind": "binary"}
    if not isinstance(data, dict):
        shape: dict[str, Any] = {"kind": _kind(data)}
        if isinstance(data, list):
            shape["items"] = len(data)
        return shape
    fields = {clip(str(k), 64): _kind(v) for k, v in list(data.items())[:_MAX_FIELDS]}
    out: dict[str, Any] = {"kind": "object", "fields": fields}
    if len(data) > _MAX_FIELDS:
        out["more_fields"] = len(data) - _MAX_FIELDS
    return out


def _key(key: bytes | None) -> bytes | None:
    """The record key, if short: a session id. A long key is replaced by its digest, like the value."""
    if key is None or len(key) <= _MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def dead_letter(letter: DeadLetter, *, source_topic: str) -> DeadLetterRecord:
    """The record for the dead-letter topic: metadata only."""
    record = letter.record
    raw = record.value or b""
    source = f"{record.topic or source_topic}/{record.partition}/{record.offset}"
    reason = clip(letter.reason, 1024)
    value = orjson.dumps(
        {
            "format": FORMAT,
            "reason": reason,
            "code": letter.code,
            "source": {
                "topic": record.topic or source_topic,
                "partition": record.partition,
                "offset": record.offset,
            },
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "key_size": None if record.key is None else len(record.key),
            "shape": shape_of(raw),
        }
    )
    headers = {"tripwire.reason": reason.encode(), "tripwire.source": source.encode()}
    return DeadLetterRecord(_key(record.key), value, headers)


def raw_copy(letter: DeadLetter, *, source_topic: str, max_bytes: int) -> DeadLetterRecord:
    """The debugging copy: the record's first `max_bytes`, with its size and digest in headers."""
    record = letter.record
    raw = record.value or b""
    source = f"{record.topic or source_topic}/{record.partition}/{record.offset}"
    headers = {
        "tripwire.reason": clip(letter.reason, 1024).encode(),
        "tripwire.source": source.encode(),
        "tripwire.size": str(len(raw)).encode(),
        "tripwire.sha256": hashlib.sha256(raw).hexdigest().encode(),
    }
    return DeadLetterRecord(_key(record.key), raw[:max_bytes], headers)


@dataclass(slots=True)
class BoundedLog:
    """At most one log line per reason code per `interval_s`; the lines held back are counted and named in
    the next one, so a flood of bad records costs a few lines, not one each."""

    interval_s: float = 10.0
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)

    def admit(self, code: str, *, now: float | None = None) -> int | None:
        """None to hold this line back; otherwise how many lines of this code were held back before it."""
        t = time.monotonic() if now is None else now
        last = self._last.get(code)
        if last is not None and t - last < self.interval_s:
            self._held[code] = self._held.get(code, 0) + 1
            return None
        self._last[code] = t
        return self._held.pop(code, 0)
