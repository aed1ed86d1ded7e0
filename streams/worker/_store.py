"""Live state over a Faust table: objects while the worker runs, changelog bytes at checkpoints.

The worker mutates decoded state objects in place and writes them back to the table's changelog only at a
checkpoint, once per key however many events changed it. After recovery Faust's table holds the changelog's
bytes; a key is decoded the first time it is looked up. Writes are returned as records for `Output`, so
they travel in the same bulk sends as the rest of the worker's output. The table's store is
`_restore.RestoringStore`, which is told each key's partition.

A checkpoint may leave a state *cold*: held as the bytes it just wrote rather than as objects, for states
that nothing is expected to change (a session that ended or was killed and settled, waiting out its grace).
One bytes object is not traced by Python's cycle collector, where a decoded state is dozens of objects: a
worker holding the bench's ended sessions as objects (over a million objects) spent up to 0.48 s in one
full collection, which held every kill behind it. A cold state is decoded again the moment anything looks
it up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from streams.worker._seam import Send

S = TypeVar("S")


class LiveStore(Generic[S]):
    def __init__(
        self,
        table: Any,
        live: type[S],
        decode: Callable[[bytes], S],
        encode: Callable[[S], bytes],
        *,
        changelog_topic: str,
    ) -> None:
        self._table = table
        self._live = live
        self._decode = decode
        self._encode = encode
        self.changelog_topic = changelog_topic

    def lookup(self, key: str) -> S | None:
        data = self._table.data
        raw = key.encode()
        value = data.get(raw)
        if value is None or isinstance(value, self._live):
            return value
        state = self._decode(value)
        data[raw] = state
        return state

    def keep(self, key: str, state: S) -> None:
        """Hold a new state in the table (it reaches the changelog at the next checkpoint)."""
        self._table.data[key.encode()] = state

    def peek(self, value: bytes) -> S:
        """A cold value decoded, without warming it in the table (a read that changes nothing)."""
        return self._decode(value)

    def entries(self) -> Iterator[tuple[str, S | bytes]]:
        """Every key with what the table holds for it now: a state, or bytes (cold, or not yet decoded
        after recovery). Nothing is decoded."""
        data = self._table.data
        for raw in list(data.keys()):
            value = data.get(raw)
            if value is not None:
                yield raw.decode(), value

    def items(self) -> Iterator[tuple[str, S]]:
        for raw in list(self._table.data.keys()):
            key = raw.decode()
            state = self.lookup(key)
            if state is not None:
                yield key, state

    def __len__(self) -> int:
        return len(self._table.data)

    def checkpoint(
        self, dirty: dict[str, tuple[S, int]], *, cold: Callable[[str, S], bool] | None = None
    ) -> list[Send]:
        """The changelog records of these states (key -> (state, partition)), which stay in the table: as
        the records' bytes where `cold(key, state)` says so, else as the objects."""
        data = self._table.data
        topic = self.changelog_topic
        encode = self._encode
        out: list[Send] = []
        for key, (state, partition) in dirty.items():
            raw = key.encode()
            value = encode(state)
            data[raw] = value if cold is not None and cold(key, state) else state
            data.note_partition(raw, partition)
            out.append((topic, partition, raw, value, None))
        return out

    def evict(self, gone: dict[str, int]) -> list[Send]:
        """Drop these keys (key -> partition) from the table; returns a tombstone for each, so a recovering
        worker does not bring them back."""
        data = self._table.data
        out: list[Send] = []
        for key, partition in gone.items():
            raw = key.encode()
            data.discard(raw)
            out.append((self.changelog_topic, partition, raw, None, None))
        return out
