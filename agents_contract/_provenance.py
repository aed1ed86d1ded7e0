"""Who wrote a record: an HMAC-SHA256 of its value bytes in the record's `tripwire-sig` header.

Two uses, one scheme. A tenant that requires it has its agents sign every event with the tenant's key (the
SDK's `event_key`), and the worker dead-letters that tenant's events that are unsigned or signed with
another key: a producer that can reach the broker can no longer publish events under the tenant's sessions
and get them killed. And the worker signs what it writes to its own internal topics (the keyed stages'
records and their verdicts) with a key derived from its own secrets, and refuses what it did not sign.

The MAC covers the value's exact bytes, so checking costs no parsing or re-encoding; the key of the record
is the event's session_id, which is inside the value. A tenant may have several keys at once (the first
signs, any verifies) so that a key is rotated without a window of dead letters.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pydantic import SecretStr

from agents_contract._commands import MIN_KEY_BYTES

SIGNATURE_HEADER: Final = "tripwire-sig"

Headers = Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None


def _material(key: SecretStr | str | bytes, what: str) -> bytes:
    raw = key.get_secret_value() if isinstance(key, SecretStr) else key
    material = raw.encode() if isinstance(raw, str) else raw
    if len(material) < MIN_KEY_BYTES:
        # The length and the name only: a key is never echoed.
        raise ValueError(f"{what} is {len(material)} bytes; at least {MIN_KEY_BYTES} are required")
    return material


def header_value(headers: Headers, name: str = SIGNATURE_HEADER) -> bytes | None:
    """A header's value from Kafka headers as aiokafka (pairs) or Faust (a mapping) gives them."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        value = headers.get(name)
        return value if isinstance(value, bytes) else None
    for key, value in headers:
        if key == name:
            return value if isinstance(value, bytes) else None
    return None


class RecordSigner:
    """Signs record values with the first key and accepts a signature by any of them."""

    def __init__(self, keys: Iterable[SecretStr | str | bytes], *, what: str = "record key") -> None:
        self._keys = [_material(key, what) for key in keys]
        if not self._keys:
            raise ValueError(f"{what}: at least one key is required")

    def sign(self, value: bytes) -> bytes:
        return hmac.new(self._keys[0], value, hashlib.sha256).hexdigest().encode()

    def headers(self, value: bytes) -> dict[str, bytes]:
        return {SIGNATURE_HEADER: self.sign(value)}

    def problem(self, value: bytes, headers: Headers) -> str | None:
        """None when the record carries a signature by one of the keys, else `unsigned` or `bad_signature`."""
        given = header_value(headers)
        if given is None:
            return "unsigned"
        for key in self._keys:
            if hmac.compare_digest(given, hmac.new(key, value, hashlib.sha256).hexdigest().encode()):
                return None
        return "bad_signature"


class EventAuth:
    """The tenants whose events must be signed, with their keys (the worker's side of `event_key`)."""

    def __init__(self, tenant_keys: Mapping[str, Sequence[SecretStr | str | bytes]]) -> None:
        self._signers = {
            tenant: RecordSigner(keys, what=f"event_signing.tenant_keys.{tenant}")
            for tenant, keys in tenant_keys.items()
        }

    def __bool__(self) -> bool:
        return bool(self._signers)

    def problem(self, tenant_id: str, value: bytes, headers: Headers) -> tuple[str, str] | None:
        """(dead-letter code, reason) for an event its tenant requires signed and is not; None otherwise."""
        signer = self._signers.get(tenant_id)
        if signer is None:
            return None
        why = signer.problem(value, headers)
        if why is None:
            return None
        if why == "unsigned":
            return why, f"tenant {tenant_id} requires signed events; this one has no {SIGNATURE_HEADER}"
        return why, f"the event's {SIGNATURE_HEADER} is not by a key of tenant {tenant_id}"
