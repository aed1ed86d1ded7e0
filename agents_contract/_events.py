"""The agent event wire contract: one envelope, one model per event kind, parsed strictly.

Every event an agent publishes to `agent.events` is one JSON object with the envelope fields and a `kind`
that picks the payload model. Attribute names follow the OpenTelemetry GenAI semantic conventions where one
exists (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, `gen_ai.tool.name`, `error.type`), so the same
names show in traces and here. Parsing never trusts its input: bounded sizes, no unknown fields, and one
`ContractError` with a readable reason for anything else, which the worker copies into the dead-letter topic.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION: Final = 1
MAX_EVENT_BYTES: Final = 64 * 1024

_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]+$")]
_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Digest = Annotated[str, Field(min_length=1, max_length=128)]
_Count = Annotated[int, Field(ge=0, le=10**12)]
_Usd = Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False)]
# A `sketch` of arguments or message content: a number tag and 32 MinHash bytes, as hex.
_Sketch = Annotated[str, Field(min_length=4, max_length=130, pattern=r"^[0-9a-f]+$")]
_Fingerprints = Annotated[list[Annotated[int, Field(ge=0, le=2**64 - 1)]], Field(max_length=512)]


class ContractError(ValueError):
    """An event or command that does not follow the wire contract; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Envelope(BaseModel):
    # Strict: `seq: true`, `"123456"` or `42.0` is not a number on the wire (lax mode would take all three),
    # and an integer-valued float for a time is refused alike, by the worker and by replay.
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True, strict=True
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: _Id
    session_id: _Id
    agent_id: _Id
    tenant_id: _Id
    user_id: _Id
    # Monotonic per (session_id, agent_id) emitter: the worker drops replays by it (at-least-once delivery).
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    # When the event happened, in milliseconds since the Unix epoch, from the agent's clock.
    event_time_ms: Annotated[int, Field(ge=0, lt=2**53)]


class SessionStarted(_Envelope):
    kind: Literal["session.started"] = "session.started"
    task: Annotated[str, Field(max_length=256)] = ""


class SessionEnded(_Envelope):
    kind: Literal["session.ended"] = "session.ended"
    outcome: Literal["completed", "failed", "cancelled", "killed"] = "completed"


class TurnStarted(_Envelope):
    kind: Literal["turn.started"] = "turn.started"
    model: _Name = Field(alias="gen_ai.request.model")


class TurnCompleted(_Envelope):
    kind: Literal["turn.completed"] = "turn.completed"
    model: _Name = Field(alias="gen_ai.request.model")
    input_tokens: _Count = Field(alias="gen_ai.usage.input_tokens")
    output_tokens: _Count = Field(alias="gen_ai.usage.output_tokens")
    cost_usd: _Usd = 0.0
    context_tokens: _Count = 0
    output_digest: _Digest | None = None


class ToolCalled(_Envelope):
    kind: Literal["tool.called"] = "tool.called"
    tool_name: _Name = Field(alias="gen_ai.tool.name")
    call_id: _Id = Field(alias="gen_ai.tool.call.id")
    args_digest: _Digest
    # A similarity sketch of the arguments (see `sketch`): a loop that rewords its call each time is still
    # seen as one intent.
    args_sketch: _Sketch | None = None


class ToolReturned(_Envelope):
    kind: Literal["tool.returned"] = "tool.returned"
    tool_name: _Name = Field(alias="gen_ai.tool.name")
    call_id: _Id = Field(alias="gen_ai.tool.call.id")
    status: Literal["ok", "error"]
    error_type: _Name | None = Field(default=None, alias="error.type")
    result_digest: _Digest | None = None
    latency_ms: Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False)]
    # Fingerprints of the result's content (see `fingerprints`), when it was text or JSON: content a tool
    # fetched in one session that turns up in another is a leak the memory events alone would not show.
    fingerprints: _Fingerprints | None = None


class MemoryWritten(_Envelope):
    kind: Literal["memory.written"] = "memory.written"
    store: _Name
    key: _Name
    fingerprints: _Fingerprints


class MemoryRead(_Envelope):
    kind: Literal["memory.read"] = "memory.read"
    store: _Name
    key: _Name
    fingerprints: _Fingerprints


class MessageSent(_Envelope):
    kind: Literal["message.sent"] = "message.sent"
    to_agent_id: _Id
    content_digest: _Digest
    content_sketch: _Sketch | None = None
    # A message from outside the guarded team (a user's, `session.message_received`): `agent_id` names its
    # sender, who is no agent of the session, so its messages are never judged as an agent's loop.
    external: Literal[True] | None = None


class ContextSource(BaseModel):
    """One source of what went into a model turn's context: which one, how fresh, whose. Never content."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    # The source (a store, an index, an API: "crm.accounts", "kb/pricing") and the item's id in it.
    name: _Name
    id: Annotated[str, Field(max_length=256)] = ""
    # When the item was fetched, and until when its owner says it holds (either, both or neither).
    fetched_at_ms: Annotated[int, Field(ge=0, lt=2**53)] | None = None
    valid_until_ms: Annotated[int, Field(ge=0, lt=2**53)] | None = None
    # Whose data it is, when the source knows: a tenant's, a user's.
    owner_tenant_id: _Id | None = None
    owner_user_id: _Id | None = None


class ContextAssembled(_Envelope):
    """The sources assembled into the context of the agent's next model turn."""

    kind: Literal["context.assembled"] = "context.assembled"
    sources: Annotated[list[ContextSource], Field(min_length=1, max_length=64)]


class AgentWaiting(_Envelope):
    kind: Literal["agent.waiting"] = "agent.waiting"
    waiting_on_agent_id: _Id


class Heartbeat(_Envelope):
    kind: Literal["heartbeat"] = "heartbeat"
    # Sent by the SDK while a guarded call runs: the agent is busy in a call begun at this time, not silent.
    in_call_since_ms: Annotated[int, Field(ge=0, lt=2**53)] | None = None


class ControlAck(_Envelope):
    """The agent's answer to a kill command: `stopping` when it has refused further steps but its guarded
    work is still ending, `stopped` once that work has ended (only this one settles the kill)."""

    kind: Literal["control.ack"] = "control.ack"
    command_id: _Id
    outcome: Literal["stopping", "stopped", "already_stopped"]
    # Milliseconds from the breaching event's send to the SDK receiving the kill, when the SDK sent it.
    kill_latency_ms: Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False)] | None = None


AgentEvent: TypeAlias = Annotated[
    SessionStarted
    | SessionEnded
    | TurnStarted
    | TurnCompleted
    | ToolCalled
    | ToolReturned
    | MemoryWritten
    | MemoryRead
    | MessageSent
    | ContextAssembled
    | AgentWaiting
    | Heartbeat
    | ControlAck,
    Field(discriminator="kind"),
]

EVENT_KINDS: Final = (
    SessionStarted,
    SessionEnded,
    TurnStarted,
    TurnCompleted,
    ToolCalled,
    ToolReturned,
    MemoryWritten,
    MemoryRead,
    MessageSent,
    ContextAssembled,
    AgentWaiting,
    Heartbeat,
    ControlAck,
)

_EVENT: TypeAdapter[AgentEvent] = TypeAdapter(AgentEvent)


def parse_event(raw: bytes) -> AgentEvent:
    """Parse one event from its wire bytes, raising `ContractError` with the reason when it is not valid."""
    if len(raw) > MAX_EVENT_BYTES:
        raise ContractError(f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    # pydantic's own JSON parser validates the bytes without building the dict first (a quarter cheaper);
    # it rejects what orjson rejects, and a rejected record is parsed again below only to say why.
    try:
        return _EVENT.validate_json(raw)
    except ValidationError:
        pass
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"an event is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ContractError(
            f"schema_version {version!r} is not supported; this worker reads {SCHEMA_VERSION}"
        )
    try:
        return _EVENT.validate_python(data)
    except ValidationError as exc:
        raise ContractError(_describe(exc)) from None


def encode_event(event: AgentEvent) -> bytes:
    """The wire bytes of an event: compact JSON with the contract's attribute names."""
    return orjson.dumps(event.model_dump(by_alias=True, exclude_none=True))


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of one agent event (any kind), for agents written in other languages."""
    return _EVENT.json_schema(by_alias=True)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
