"""Control commands and their signatures: what the worker sends on `agent.control` and how agents trust it.

A kill is only as good as the agent's reason to believe it, and the control topic is writable by anything
that can reach the broker. So every command carries a signature over its canonical JSON (sorted keys, the
signature left out), and an agent drops anything that does not verify. Two schemes:

- Ed25519 (`ed25519:` and the 64-byte signature in URL-safe base64): the workers sign with a private key
  that only they hold, agents verify with the public key, so nothing an agent process holds can sign a kill
  or a tool-circuit command. Set `commands.private_key` on the workers and `verify_key=` in the SDK.
- HMAC-SHA256 under a key shared by the workers and the agents (`signing_key`): the first release's scheme,
  kept readable for one release. While `commands.hmac_compat` is on, a worker with a private key sends each
  command twice, Ed25519- and HMAC-signed, so agents not yet given the public key still obey it; an agent
  given the public key and no shared key accepts only Ed25519.

Command ids are derived from what caused the kill, so a worker that reprocesses events after a crash
re-sends the same command and the agent treats it as the one it already obeyed.

A signature proves who wrote a command, not that it still holds. An Ed25519-signed command also carries the
session's epoch when it was issued (`tripwire release` starts a new one, kept beside the fence in Redis) and
an expiry, and the SDK refuses a command of another epoch or past its expiry and counts it: a kill captured
before a release cannot stop the session again after it, and a captured tool-circuit command dies with its
expiry. The HMAC copies keep the first release's fields (those agents refuse unknown ones), so they have
neither: replay protection comes with Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Annotated, Any, Final, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from agents_contract._events import ContractError, _describe

MIN_KEY_BYTES: Final = 16
ED25519: Final = "ed25519:"
# How long a command is obeyed after it is issued, by default: a kill as long as the fence keeps it, a
# tool-circuit command as long as an SDK keeps a circuit open at most.
KILL_TTL_S: Final = 7 * 24 * 3600
CIRCUIT_TTL_S: Final = 3600
# Clocks of workers and agents disagree a little; an expiry is not enforced to the millisecond.
CLOCK_SKEW_MS: Final = 60_000

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
    # Ed25519-signed commands only: the epoch of the target session the command was issued in (0 until
    # the session is first released; None for other scopes) and the wall-clock ms after which no agent
    # obeys it. Left off the wire when unset, as on HMAC copies.
    epoch: Annotated[int, Field(ge=0, lt=2**53)] | None = None
    expires_at_ms: Annotated[int, Field(ge=0)] | None = None
    signature: Annotated[str, Field(max_length=128)] = ""


def kill_command_id(session_id: str, detector: str) -> str:
    """A stable id per (session, detector): reprocessing the same breach yields the same command."""
    digest = hashlib.sha256(f"{session_id}\x00{detector}".encode()).hexdigest()
    return f"kill-{digest[:32]}"


class CommandSigner:
    """Signs and verifies control commands: Ed25519 when given a key pair's private half (signing) or public
    half (verifying), HMAC-SHA256 with the shared `key`, or both while agents move from one to the other."""

    def __init__(
        self,
        key: SecretStr | str | bytes | None = None,
        *,
        private_key: SecretStr | str | None = None,
        public_key: str | None = None,
        accept_hmac: bool = True,
        kill_ttl_s: int = KILL_TTL_S,
        circuit_ttl_s: int = CIRCUIT_TTL_S,
    ) -> None:
        self._ttl_ms = {"tool": circuit_ttl_s * 1000, "session": kill_ttl_s * 1000}
        self._key: bytes | None = None
        if key is not None:
            raw = key.get_secret_value() if isinstance(key, SecretStr) else key
            material = raw.encode() if isinstance(raw, str) else raw
            if len(material) < MIN_KEY_BYTES:
                raise ValueError(
                    f"signing key is {len(material)} bytes; at least {MIN_KEY_BYTES} are required"
                )
            self._key = material
        self._private: Ed25519PrivateKey | None = None
        if private_key is not None:
            secret = private_key.get_secret_value() if isinstance(private_key, SecretStr) else private_key
            self._private = Ed25519PrivateKey.from_private_bytes(_key_bytes(secret, "private_key"))
        self._public: Ed25519PublicKey | None = (
            Ed25519PublicKey.from_public_bytes(_key_bytes(public_key, "verify_key"))
            if public_key is not None
            else self._private.public_key()
            if self._private is not None
            else None
        )
        if self._key is None and self._public is None:
            raise ValueError("commands need a signing key (HMAC) or an Ed25519 key")
        # HMAC-signed commands are believed only with the shared key, and only while compatibility is on.
        self.accept_hmac = accept_hmac and self._key is not None

    @property
    def ed25519(self) -> bool:
        """True when this signer verifies Ed25519 signatures (it holds the public or the private key)."""
        return self._public is not None

    def _body(self, command: KillCommand) -> bytes:
        return orjson.dumps(_wire(command, exclude={"signature"}), option=orjson.OPT_SORT_KEYS)

    def _mac(self, command: KillCommand) -> str:
        assert self._key is not None
        return hmac.new(self._key, self._body(command), hashlib.sha256).hexdigest()

    def sign(self, command: KillCommand) -> KillCommand:
        """Signed with the private key when there is one (with an epoch, 0 unless given, for a session
        command and an expiry by its scope unless given), else with the shared key (the first release's
        fields only)."""
        if self._private is not None:
            update: dict[str, object] = {}
            if command.expires_at_ms is None:
                ttl_ms = self._ttl_ms["tool" if command.scope == "tool" else "session"]
                update["expires_at_ms"] = command.issued_at_ms + ttl_ms
            if command.epoch is None and command.scope == "session":
                update["epoch"] = 0
            if update:
                command = command.model_copy(update=update)
            signature = base64.urlsafe_b64encode(self._private.sign(self._body(command))).rstrip(b"=")
            return command.model_copy(update={"signature": ED25519 + signature.decode()})
        if self._key is None:
            raise ValueError("this signer only verifies (it holds the public key)")
        return self._hmac_form(command)

    def bind(self, command: KillCommand, epoch: int) -> KillCommand:
        """The command signed again for the session's current epoch (a no-op where it has it already, or
        where it is HMAC-signed and carries no epoch)."""
        if self._private is None or command.epoch == epoch:
            return command
        return self.sign(command.model_copy(update={"epoch": epoch, "signature": ""}))

    def _hmac_form(self, command: KillCommand) -> KillCommand:
        legacy = command.model_copy(update={"epoch": None, "expires_at_ms": None, "signature": ""})
        return legacy.model_copy(update={"signature": self._mac(legacy)})

    def variants(self, command: KillCommand) -> list[KillCommand]:
        """The signed forms of a command to publish: the command as signed, and while HMAC compatibility is
        on an HMAC-signed copy in the first release's fields beside an Ed25519 one (same command id: an
        agent obeys it once)."""
        if command.signature.startswith(ED25519) and self.accept_hmac:
            return [self._hmac_form(command), command]
        return [command]

    def verify(self, command: KillCommand) -> bool:
        signature = command.signature
        if signature.startswith(ED25519):
            if self._public is None:
                return False
            try:
                raw = base64.urlsafe_b64decode(signature[len(ED25519) :] + "==")
                self._public.verify(raw, self._body(command))
            except (InvalidSignature, binascii.Error, ValueError):
                return False
            return True
        return self.accept_hmac and bool(signature) and hmac.compare_digest(signature, self._mac(command))


def refusal(command: KillCommand, *, now_ms: int, epoch: int | None) -> str | None:
    """Why an agent must not obey this (verified) command, or None: `expired` past its expiry, `stale_epoch`
    when it names another epoch of its session than the agent's (`epoch`, None when unknown). A command
    without an epoch (an HMAC copy) is not bound to one."""
    if command.expires_at_ms is not None and now_ms > command.expires_at_ms + CLOCK_SKEW_MS:
        return "expired"
    if (
        command.scope == "session"
        and epoch is not None
        and command.epoch is not None
        and command.epoch != epoch
    ):
        return "stale_epoch"
    return None


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as (private, public), each 32 bytes in URL-safe base64: the private key for
    the workers' `commands.private_key`, the public one for the agents' `verify_key`."""
    private = Ed25519PrivateKey.generate()
    return _b64(private.private_bytes_raw()), _b64(private.public_key().public_bytes_raw())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_FROM_URLSAFE = str.maketrans("-_", "+/")


def _key_bytes(text: str, name: str) -> bytes:
    padded = text.strip() + "=" * (-len(text.strip()) % 4)
    try:
        # Strict: a key with a stray character is a wrong key, not one to be read around it.
        raw = binascii.a2b_base64(padded.translate(_FROM_URLSAFE).encode(), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not URL-safe base64 (use `tripwire keygen`)") from None
    if len(raw) != 32:
        raise ValueError(f"{name} decodes to {len(raw)} bytes; an Ed25519 key is 32 (use `tripwire keygen`)")
    return raw


def _wire(command: KillCommand, *, exclude: set[str] | None = None) -> dict[str, Any]:
    # `tenant_id` is left out when unset, so session commands read (and verify) as they did before it.
    skip = set(exclude or ())
    for optional in ("tenant_id", "epoch", "expires_at_ms"):
        if getattr(command, optional) is None:
            skip.add(optional)
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
