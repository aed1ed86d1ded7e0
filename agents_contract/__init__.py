"""Tripwire's wire contract and agent SDK: the events agents publish, the commands they obey.

This package is all an agent process needs: it does not import the worker (`streams`), the detectors or the
sinks, so it can be vendored into agent images on its own.
"""

from agents_contract._commands import (
    CommandSigner,
    KillCommand,
    encode_command,
    kill_command_id,
    parse_command,
)
from agents_contract._events import (
    EVENT_KINDS,
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    AgentEvent,
    AgentWaiting,
    ContractError,
    ControlAck,
    Heartbeat,
    MemoryRead,
    MemoryWritten,
    MessageSent,
    SessionEnded,
    SessionStarted,
    ToolCalled,
    ToolReturned,
    TurnCompleted,
    TurnStarted,
    encode_event,
    event_json_schema,
    parse_event,
)
from agents_contract._fence import Fence, FenceError
from agents_contract._fingerprint import canonical_digest, fingerprints
from agents_contract._schema import contract_json_schema
from agents_contract._sdk import (
    AgentGuard,
    GuardedSession,
    SessionKilled,
    ToolCircuitOpen,
    ToolCircuits,
    Turn,
    digest,
)
from agents_contract._text import MAX_ID, MAX_REASON, bounded_evidence, clip, clip_id

__all__ = [
    "EVENT_KINDS",
    "MAX_EVENT_BYTES",
    "MAX_ID",
    "MAX_REASON",
    "SCHEMA_VERSION",
    "AgentEvent",
    "AgentGuard",
    "AgentWaiting",
    "CommandSigner",
    "ContractError",
    "ControlAck",
    "Fence",
    "FenceError",
    "GuardedSession",
    "Heartbeat",
    "KillCommand",
    "MemoryRead",
    "MemoryWritten",
    "MessageSent",
    "SessionEnded",
    "SessionKilled",
    "SessionStarted",
    "ToolCalled",
    "ToolCircuitOpen",
    "ToolCircuits",
    "ToolReturned",
    "Turn",
    "TurnCompleted",
    "TurnStarted",
    "bounded_evidence",
    "canonical_digest",
    "clip",
    "clip_id",
    "contract_json_schema",
    "digest",
    "encode_command",
    "encode_event",
    "event_json_schema",
    "fingerprints",
    "kill_command_id",
    "parse_command",
    "parse_event",
]
