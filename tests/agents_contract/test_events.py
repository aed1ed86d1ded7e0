"""The wire contract: what agents in any language may send, and what the worker refuses."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents_contract import (
    EVENT_KINDS,
    ContractError,
    ToolReturned,
    TurnCompleted,
    contract_json_schema,
    encode_event,
    parse_event,
)

ENVELOPE = {
    "schema_version": 1,
    "event_id": "e-1",
    "session_id": "s-1",
    "agent_id": "planner",
    "tenant_id": "acme",
    "user_id": "u-7",
    "seq": 3,
    "event_time_ms": 1_700_000_000_000,
}


def test_turn_completed_uses_opentelemetry_genai_names_on_the_wire() -> None:
    event = TurnCompleted(**ENVELOPE, model="gpt-4.1", input_tokens=10, output_tokens=5, cost_usd=0.01)
    wire = orjson.loads(encode_event(event))
    assert wire["gen_ai.request.model"] == "gpt-4.1"
    assert wire["gen_ai.usage.input_tokens"] == 10
    assert wire["gen_ai.usage.output_tokens"] == 5
    assert parse_event(encode_event(event)) == event


def test_tool_error_class_is_error_type() -> None:
    event = ToolReturned(
        **ENVELOPE,
        tool_name="search",
        call_id="c1",
        status="error",
        error_type="TimeoutError",
        latency_ms=3.5,
    )
    wire = orjson.loads(encode_event(event))
    assert wire["error.type"] == "TimeoutError"
    assert wire["gen_ai.tool.name"] == "search"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (orjson.dumps({**ENVELOPE, "schema_version": 2, "kind": "heartbeat"}), "schema_version 2"),
        (orjson.dumps({**ENVELOPE, "kind": "teleport"}), "kind"),
        (orjson.dumps({**ENVELOPE, "kind": "heartbeat", "extra": 1}), "extra"),
        (orjson.dumps({**ENVELOPE, "kind": "heartbeat", "session_id": ""}), "session_id"),
        (orjson.dumps({**ENVELOPE, "kind": "heartbeat", "seq": -1}), "seq"),
        (b"{" + b" " * 70_000 + b"}", "limit"),
        (b'{"schema_version": 1, "seq": 123456789012345678901234567890}', ""),
    ],
)
def test_invalid_events_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_event(raw)
    assert reason in caught.value.reason


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_contract_error(raw: bytes) -> None:
    with contextlib.suppress(ContractError):
        parse_event(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


# The recursive strategy's first draws are slow on a busy 2-core CI machine; the property is what matters.
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from([*ENVELOPE, "kind", "gen_ai.tool.name", "status"]), json_values))
def test_hostile_objects_never_raise_anything_but_contract_error(data: dict[str, object]) -> None:
    with contextlib.suppress(ContractError):
        parse_event(orjson.dumps({**data, "schema_version": 1}))


def test_schema_covers_every_event_kind_and_the_kill_command() -> None:
    schema = contract_json_schema()
    kinds = {m.model_fields["kind"].default for m in EVENT_KINDS}
    mapping = schema["AgentEvent"]["discriminator"]["mapping"]
    assert set(mapping) == kinds
    assert "signature" in schema["KillCommand"]["properties"]
    orjson.dumps(schema)
