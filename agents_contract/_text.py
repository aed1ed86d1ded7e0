"""Bounded text for what Tripwire builds from untrusted input: reasons, ids and evidence in commands and
alerts. A limit is enforced where the text is made (cut with a marker that says how much went), never left
to a model constructor that would raise on the kill path."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import orjson

MAX_REASON: Final = 1024
MAX_ID: Final = 128
MAX_EVIDENCE_BYTES: Final = 4096
_MAX_VALUE_CHARS: Final = 256
_MAX_ITEMS: Final = 32


def clip(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    marker = f"...[+{len(text) - limit} chars]"
    keep = max(0, limit - len(marker) - 8)  # the count in the marker may grow by a digit or two
    marker = f"...[+{len(text) - keep} chars]"
    return text[:keep] + marker


def clip_id(value: str, limit: int = MAX_ID) -> str:
    """An id that fits in `limit`: the value itself, or its head and a digest of the whole (still unique,
    still recognisable)."""
    if len(value) <= limit:
        return value
    tag = hashlib.sha256(value.encode(errors="replace")).hexdigest()[:16]
    return f"{value[: limit - 17]}~{tag}"


def _bounded(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return clip(value, _MAX_VALUE_CHARS)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= 3:
        return clip(repr(value), 64)
    if isinstance(value, list | tuple):
        items = [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]
        if len(value) > _MAX_ITEMS:
            items.append(f"...[+{len(value) - _MAX_ITEMS} items]")
        return items
    if isinstance(value, dict):
        out = {}
        for i, (k, v) in enumerate(value.items()):
            if i == _MAX_ITEMS:
                out["_truncated_keys"] = len(value) - _MAX_ITEMS
                break
            out[clip(str(k), 64)] = _bounded(v, depth + 1)
        return out
    return clip(repr(value), 64)


def bounded_evidence(evidence: dict[str, Any], max_bytes: int = MAX_EVIDENCE_BYTES) -> dict[str, Any]:
    """Evidence that serialises to JSON within `max_bytes`: long strings and lists cut, and past the budget
    the remaining keys dropped (counted in `_truncated_keys`). Small evidence comes back unchanged."""
    try:
        if len(orjson.dumps(evidence)) <= max_bytes:
            return evidence
    except TypeError:
        pass
    out: dict[str, Any] = {}
    used = 2
    items = list(evidence.items())
    for i, (key, value) in enumerate(items):
        k = clip(str(key), 64)
        v = _bounded(value)
        size = len(orjson.dumps({k: v}, default=repr))
        if used + size > max_bytes - 32:
            out["_truncated_keys"] = len(items) - i
            break
        out[k] = v
        used += size
    return out


_NOT_IN_ID: Final = re.compile(r"[^A-Za-z0-9._:@/+=-]+")


def agent_id_for(name: str) -> str:
    """A framework's agent name ("Senior Researcher") as a valid agent id ("Senior_Researcher"): characters
    an id cannot hold become `_`, a long name keeps its head and a digest of the whole. "" when nothing of
    the name can be kept (use the session's own agent id then)."""
    slug = _NOT_IN_ID.sub("_", name).strip("_")
    if len(slug) <= MAX_ID:
        return slug
    tag = hashlib.sha256(name.encode(errors="replace")).hexdigest()[:16]
    return f"{slug[: MAX_ID - 17]}_{tag}"
