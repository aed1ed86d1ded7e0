"""Content fingerprints and argument digests, computed inside the agent process so no raw content leaves it.

Tripwire detects data from one session surfacing in another (a user's record written to shared memory and
read back in someone else's session) without ever seeing that data. The SDK reduces content to a short list
of 64-bit numbers here and publishes only those: each number is a keyed hash (BLAKE2b with Tripwire's own
personalisation) of `shingle` consecutive normalised words, which cannot be turned back into the words, and
only a sample of them is kept, so the events carry neither the text nor enough to rebuild it. Normalising
(Unicode NFKC, casefold, word characters only) makes a copy that differs in case, spacing or punctuation
give the same numbers. The sample is chosen by winnowing (Schleimer, Wilkerson and Aiken, SIGMOD 2003):
of every `window` consecutive shingle hashes the smallest is kept. Any passage of at least
`shingle + window - 1` words holds `window` whole shingles, one complete window, and both texts that contain
the passage keep that window's minimum: a shared passage that long always shares a fingerprint, wherever it
sits in either text, while unrelated texts share one only by a 64-bit hash collision. Past `limit` the
guarantee becomes statistical: the `limit` smallest values are kept (in text order), a consistent sample, so
two long texts keep the same numbers for what they share instead of only those of their first pages.

`canonical_digest` is the other half: a digest of a tool call's arguments that is equal when the arguments
differ only trivially (key order, list order, case, spacing, empty values), so a loop that rephrases the
same call is still seen as repeating. `sketch` goes one step further, for calls that are reworded rather than
repeated: a b-bit MinHash (Li and König, WWW 2010) of the arguments' values (texts by their words, word
pairs and character trigrams; paths, URLs and ids whole), 32 one-byte samples whose share of matches
estimates the Jaccard similarity of the two feature sets. One byte per sample keeps no word recoverable
from it, and the sketch says nothing of the keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import re
import struct
import time
import unicodedata
import uuid
import zlib
from typing import Any, Final

import orjson
from pydantic import BaseModel

MAX_FINGERPRINTS: Final = 512
MIN_WORDS: Final = 4

_PERSON: Final = b"tripwire.fp.v1"
_NOT_WORD: Final = re.compile(r"[^\w\s]+")
_SPACE: Final = re.compile(r"\s")


_CHUNK: Final = 4_096
_BLOCK: Final = 512


def _words(text: str, *, cooperative: bool = False) -> list[str]:
    """The normalised words of `text`. A long text is normalised in pieces cut at whitespace (followed by a
    character that does not combine with it), which gives the same words, so no single C call holds the
    interpreter for long: fingerprinting in a thread leaves the agent's event loop free to take a kill."""
    if len(text) <= _CHUNK:
        return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold()).split()
    words: list[str] = []
    start = 0
    while start < len(text):
        end = len(text)
        found = _SPACE.search(text, start + _CHUNK)
        while found is not None:
            cut = found.end()
            if cut >= len(text) or not unicodedata.combining(text[cut]):
                end = cut
                break
            found = _SPACE.search(text, cut)
        words.extend(_NOT_WORD.sub("", unicodedata.normalize("NFKC", text[start:end]).casefold()).split())
        start = end
        if cooperative:
            time.sleep(0)
    return words


def _hash(words: list[str]) -> int:
    body = " ".join(words).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(body, digest_size=8, person=_PERSON).digest(), "big")


def fingerprints(
    text: str, *, shingle: int = 8, window: int = 4, limit: int = 64, cooperative: bool = False
) -> list[int]:
    """Winnowed 64-bit fingerprints of `text`: texts sharing a passage of `shingle + window - 1` words share
    one. At most `limit` of them (the contract carries at most 512); [] for text under 4 words.

    `cooperative` (for a thread beside an event loop): give up the interpreter every few thousand words, so
    the loop never waits for the whole text; the result is the same."""
    if shingle < 1 or window < 1:
        raise ValueError(f"shingle ({shingle}) and window ({window}) must be at least 1")
    if not 0 <= limit <= MAX_FINGERPRINTS:
        raise ValueError(f"limit is {limit}; it must be between 0 and {MAX_FINGERPRINTS}")
    words = _words(text, cooperative=cooperative)
    if len(words) < shingle:
        return [_hash(words)] if len(words) >= MIN_WORDS and limit else []
    hashes: list[int] = []
    for block in range(0, len(words) - shingle + 1, _BLOCK):
        end = min(block + _BLOCK, len(words) - shingle + 1)
        hashes.extend(_hash(words[i : i + shingle]) for i in range(block, end))
        if cooperative:
            time.sleep(0)
    kept: dict[int, None] = {}
    for i in range(max(1, len(hashes) - window + 1)):
        kept.setdefault(min(hashes[i : i + window]))
    if len(kept) <= limit:
        return list(kept)
    smallest = set(heapq.nsmallest(limit, kept))
    return [h for h in kept if h in smallest]


def canonical_digest(value: Any) -> str:
    """A digest of tool arguments (32 hex characters) that ignores key and list order, case, runs of
    whitespace and keys whose value is empty (None, "", [], {})."""
    try:
        body = orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS)
    except (RecursionError, TypeError, ValueError):
        # Arguments orjson cannot take (nesting deeper than it allows, say). A digest that is unique per call
        # is the safe fallback: it can hide a repeat, but never make distinct calls look like a loop.
        body = uuid.uuid4().bytes
    return hashlib.sha256(body).hexdigest()[:32]


def _canonical(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFKC", value).split()).casefold()
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # orjson refuses integers past 64 bits; their decimal text is as good for a digest.
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        # 2 and 2.0 are the same argument; past 2**53 a float is not an exact integer anyway.
        return int(value) if value.is_integer() and abs(value) <= 2**53 else value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            canonical = _canonical(item)
            if canonical is None or canonical in ("", [], {}):
                continue
            out[key if isinstance(key, str) else str(key)] = canonical
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(item) for item in value]
        return sorted(items, key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    # Anything else (datetimes, UUIDs, enums, custom objects): its JSON form as orjson writes it.
    return _canonical(orjson.loads(orjson.dumps(value, default=repr)))


SKETCH_SAMPLES: Final = 32
# Text beyond this is left out of a sketch: a call's intent shows in its first pages; the cost stays small.
_SKETCH_CHARS: Final = 4_000
# Values of at most this many words (queries, requests, selectors) are told apart by their numbers:
# "summarise section 3" is another request than "summarise section 4", however alike the words. Words are
# counted apart at punctuation too, so code is not a short request: `head(5)` and `head(10)` in a rewritten
# script are the same exploration.
_SHORT_WORDS: Final = 16
_TOKEN: Final = re.compile(r"\w+")
_SAMPLES: Final = struct.Struct(f"<{SKETCH_SAMPLES}I")
_WHITESPACE: Final = re.compile(r"\s")
_DIGITS: Final = re.compile(r"\d+")


def _leaves(value: Any, out: list[str], depth: int = 0) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        out.append(repr(value))
    elif depth > 32:
        return
    elif isinstance(value, dict):
        for item in value.values():
            _leaves(item, out, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _leaves(item, out, depth + 1)
    elif isinstance(value, BaseModel):
        _leaves(value.model_dump(mode="json"), out, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _leaves(dataclasses.asdict(value), out, depth + 1)
    else:
        out.append(str(value))


def sketch(value: Any) -> str | None:
    """A similarity sketch of a call's arguments (or a message): 66 hex characters, a tag of the numbers
    in a short value (its text and its space-free leaves) and 32 MinHash bytes of its features; keys are
    left out. A value without whitespace (a path, a URL, a selector, an id, a number) is one feature, whole:
    `src/lexer.py` is another file than `src/parser.py`, not a rewording of it. Text is its words, word
    pairs and the words' character trigrams. None when the value holds nothing. Compare two with
    `similarity`."""
    parts: list[str] = []
    _leaves(value, parts)
    features: set[str] = set()
    prose: list[str] = []
    # The space-free leaves (ids, paths, numbers) count as words of the text for the number tag: page 2 of
    # a listing is other data than page 3, whichever form the page number takes.
    whole: list[str] = []
    used = 0
    for part in parts:
        if used >= _SKETCH_CHARS:
            break
        part = part[: _SKETCH_CHARS - used]
        used += len(part)
        stripped = part.strip()
        if stripped and not _WHITESPACE.search(stripped):
            whole.append(unicodedata.normalize("NFKC", stripped).casefold())
        else:
            prose.append(part)
    features.update("=" + leaf for leaf in whole)
    words = _words(" ".join(prose))
    # Trigrams let "restaurant" and "restaurants" meet; word pairs keep unrelated code apart (two functions of
    # one code base share a quarter of their trigrams, a tenth of their words and pairs).
    features.update(words)
    features.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    for word in words:
        padded = f"^{word}$"
        features.update(padded[i : i + 3] for i in range(len(padded) - 2))
    if not features:
        return None
    short = len(words) + len(whole) <= _SHORT_WORDS and (
        sum(len(_TOKEN.findall(part)) for part in prose) + len(whole) <= _SHORT_WORDS
    )
    numbers = sorted(set(_DIGITS.findall(" ".join([*words, *whole])))) if short else []
    # 1..255: 0 is "no numbers", which any other tag may be compared with.
    tag = zlib.crc32(" ".join(numbers).encode()) % 255 + 1 if numbers else 0
    rows = [
        _SAMPLES.unpack(hashlib.shake_128(f.encode("utf-8", "surrogatepass")).digest(_SAMPLES.size))
        for f in features
    ]
    samples = bytes([tag, *(m & 0xFF for m in map(min, zip(*rows, strict=True)))])
    return samples.hex()


def similarity(a: str, b: str) -> float:
    """The estimated Jaccard similarity (0..1) of the values two sketches were made of; 0 for two short
    texts with other numbers in them, or for sketches of another form."""
    if len(a) != len(b) or len(a) < 4 or (a[:2] != b[:2] and a[:2] != "00" and b[:2] != "00"):
        return 0.0
    try:
        # Samples that agree are the zero bytes of the two sketches XORed (one C call each, no Python loop:
        # the detector compares sketches on every call).
        width = len(a) // 2 - 1
        differ = (int(a[2:], 16) ^ int(b[2:], 16)).to_bytes(width, "big")
        int(a[:2], 16), int(b[:2], 16)
    except (ValueError, OverflowError):  # not hex, or an odd number of digits
        return 0.0
    share = differ.count(0) / width
    # Two different minima still agree in their low byte once in 256 times.
    return max(0.0, (share - 1 / 256) / (1 - 1 / 256))
