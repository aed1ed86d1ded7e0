"""Tripwire's wire contract and agent SDK: the events agents publish, the commands they obey.

This package is all an agent process needs: it does not import the worker (`streams`), the detectors or the
sinks, so it can be vendored into agent images on its own.
"""

from agents_contract._circuits import ToolCircuitOpen, ToolCircuits
from agents_contract._commands import (
    CommandSigner,
    KillCommand,
    encode_command,
    generate_keypair,
    kill_command_id,
    parse_command,
    refusal,
)
from agents_contract._dev import dev_stack
from agents_contract._events import (
    EVENT_KINDS,
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    AgentEvent,
    AgentWaiting,
    ContextAssembled,
    ContextSource,
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
from agents_contract._fingerprint import canonical_digest, fingerprints, similarity, sketch
from agents_contract._gate import BudgetGate, publish_limits
from agents_contract._health import Health
from agents_contract._provenance import SIGNATURE_HEADER, EventAuth, Headers, RecordSigner
from agents_contract._schema import contract_json_schema
from agents_contract._sdk import (
    MAX_FINGERPRINT_CHARS,
    AgentGuard,
    BudgetExhausted,
    GuardedSession,
    ModelCall,
    SessionKilled,
    ToolCall,
    TripwireStop,
    TripwireUnavailable,
    Turn,
    digest,
)
from agents_contract._security import KafkaSecurity
from agents_contract._sync import SyncAgentGuard, SyncSession, SyncTurn
from agents_contract._text import MAX_ID, MAX_REASON, agent_id_for, bounded_evidence, clip, clip_id

__all__ = [
    "EVENT_KINDS",
    "MAX_EVENT_BYTES",
    "MAX_FINGERPRINT_CHARS",
    "MAX_ID",
    "MAX_REASON",
    "SCHEMA_VERSION",
    "SIGNATURE_HEADER",
    "AgentEvent",
    "AgentGuard",
    "AgentWaiting",
    "BudgetExhausted",
    "BudgetGate",
    "CommandSigner",
    "ContextAssembled",
    "ContextSource",
    "ContractError",
    "ControlAck",
    "EventAuth",
    "Fence",
    "FenceError",
    "GuardedSession",
    "Headers",
    "Health",
    "Heartbeat",
    "KafkaSecurity",
    "KillCommand",
    "MemoryRead",
    "MemoryWritten",
    "MessageSent",
    "ModelCall",
    "RecordSigner",
    "SessionEnded",
    "SessionKilled",
    "SessionStarted",
    "SyncAgentGuard",
    "SyncSession",
    "SyncTurn",
    "ToolCall",
    "ToolCalled",
    "ToolCircuitOpen",
    "ToolCircuits",
    "ToolReturned",
    "TripwireStop",
    "TripwireUnavailable",
    "Turn",
    "TurnCompleted",
    "TurnStarted",
    "agent_id_for",
    "bounded_evidence",
    "canonical_digest",
    "clip",
    "clip_id",
    "contract_json_schema",
    "dev_stack",
    "digest",
    "encode_command",
    "encode_event",
    "event_json_schema",
    "fingerprints",
    "generate_keypair",
    "kill_command_id",
    "parse_command",
    "parse_event",
    "publish_limits",
    "refusal",
    "similarity",
    "sketch",
]
