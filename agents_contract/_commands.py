"""Control commands and their signatures: what the worker sends on `agent.control` and how agents trust it.

A kill is only as good as the agent's reason to believe it, and the control topic is writable by anything
that can reach the broker. So every command carries an HMAC-SHA256 over its canonical JSON (sorted keys, the
signature left out) under a key shared by the workers and the agents; an agent drops anything that does not
verify. Command ids are derived from what caused the kill, so a worker that reprocesses events after a crash
re-sends the same command and the agent treats it as the one it already obeyed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from agents_contract._events import ContractError, _describe

MIN_KEY_BYTES: Final = 16

Scope = Literal["session", "agent", "tenant", "tool"]
_Id = Annotated[str, Field(min_length=1, max_length=128)]


class KillCommand(BaseModel):
    """Stop the work named by `scope` and `target` (for scope `session`, the target is the session_id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    command_id: _Id
    scope: Scope = "session"
    target: _Id
    # For a `tool` command: the tenant whose agents it applies to (None: every agent, a fleet-wide circuit).
    tenant_id: _Id | None = None
    reason: Annotated[str, Field(max_length=1024)]
    detector: _Id
    evidence: dict[str, Any] = Field(default_factory=dict)
    issued_at_ms: Annotated[int, Field(ge=0)]
    # The event that crossed the limit, so the agent can time detection-to-stop end to end.
    breach_event_id: _Id | None = None
    breach_seq: Annotated[int, Field(ge=0)] | None = None
    signature: Annotated[str, Field(max_length=128)] = ""


def kill_command_id(session_id: str, detector: str) -> str:
    """A stable id per (session, detector): reprocessing the same breach yields the same command."""
    digest = hashlib.sha256(f"{session_id}\x00{detector}".encode()).hexdigest()
    return f"kill-{digest[:32]}"


class CommandSigner:
    """Signs and verifies control commands with one shared key."""

    def __init__(self, key: SecretStr | str | bytes) -> None:
        raw = key.get_secret_value() if isinstance(key, SecretStr) else key
        material = raw.encode() if isinstance(raw, str) else raw
        if len(material) < MIN_KEY_BYTES:
            raise ValueError(f"signing key is {len(material)} bytes; at least {MIN_KEY_BYTES} are required")
        self._key = material

    def _mac(self, command: KillCommand) -> str:
        body = orjson.dumps(_wire(command, exclude={"signature"}), option=orjson.OPT_SORT_KEYS)
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def sign(self, command: KillCommand) -> KillCommand:
        return command.model_copy(update={"signature": self._mac(command)})

    def verify(self, command: KillCommand) -> bool:
        return bool(command.signature) and hmac.compare_digest(command.signature, self._mac(command))


def _wire(command: KillCommand, *, exclude: set[str] | None = None) -> dict[str, Any]:
    # `tenant_id` is left out when unset, so session commands read (and verify) as they did before it.
    skip = set(exclude or ())
    if command.tenant_id is None:
        skip.add("tenant_id")
    return command.model_dump(exclude=skip)


def encode_command(command: KillCommand) -> bytes:
    return orjson.dumps(_wire(command))


def parse_command(raw: bytes) -> KillCommand:
    """Parse a command from its wire bytes; `ContractError` says why it is not one. Does not verify."""
    try:
        return KillCommand.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"not JSON: {exc}") from None
    except ValidationError as exc:
        raise ContractError(_describe(exc)) from None
