"""No record disables the guardrail: each crafted record of the fault trials, through the worker's judging
path, becomes a dead letter with its reason or is judged sanely, and the runaway next to it is still
killed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents_contract import MAX_REASON, encode_event, parse_event
from detectors import DetectorSettings, FailureClass, SessionState, Verdict
from streams.worker._dlq import dead_letter, shape_of
from streams.worker._pipeline import encode_verdict
from tests.streams.judging import EVENTS, VERDICTS, Clock, JudgingPath

NOW = Clock().now_ms
LONG = "x" * 120


def envelope(
    session: str, seq: int, *, t: int = NOW, agent: str = "a1", tenant: str = "acme", **kw: Any
) -> dict:
    return {
        "schema_version": 1,
        "event_id": f"{session[-40:]}-{agent[-16:]}-{seq}",
        "session_id": session,
        "agent_id": agent,
        "tenant_id": tenant,
        "user_id": "u-1",
        "seq": seq,
        "event_time_ms": t,
        **kw,
    }


def send(path: JudgingPath, **fields: Any) -> None:
    path.send(orjson.dumps(fields), fields["session_id"].encode())


def runaway(path: JudgingPath, session: str, steps: int = 60, **kw: Any) -> None:
    for seq in range(1, steps + 1):
        send(
            path,
            **envelope(session, seq, **kw),
            kind="tool.called",
            **{"gen_ai.tool.name": "search", "gen_ai.tool.call.id": f"c{seq}"},
            args_digest=f"d{seq}",
        )


def test_an_overlong_leak_reason_is_cut_where_it_is_built_and_the_kill_goes_out() -> None:
    path = JudgingPath()
    writer = envelope(LONG + "w", 1, agent=LONG + "a", tenant=LONG + "t")
    writer["user_id"] = LONG + "u"
    send(path, **writer, kind="memory.written", store="s" * 256, key="k" * 256, fingerprints=[1])
    reader = envelope(LONG + "r", 1, t=NOW + 1, agent=LONG + "b", tenant=LONG + "x")
    send(path, **reader, kind="memory.read", store="s" * 256, key="k" * 256, fingerprints=[2])
    (kill,) = path.judged.kills
    assert kill.target == LONG + "r"
    assert len(kill.reason) <= MAX_REASON
    assert "chars]" in kill.reason  # cut with a marker, not dropped
    assert path.judged.dead_letters == []


@pytest.mark.parametrize(
    "value",
    [b"[]", b"null", b"[1, 2]", b'"text"', b"{}", b'{"detector": 1}'],
)
def test_hostile_records_on_the_verdicts_topic_are_dead_letters(value: bytes) -> None:
    path = JudgingPath()
    path.send(value, b"s-1", topic=VERDICTS)
    (letter,) = path.judged.dead_letters
    assert letter.code == "bad_stage_verdict"
    assert path.judged.kills == []


def forged_verdict(detector: str, session: str = "s-1") -> bytes:
    verdict = Verdict(detector, FailureClass.MEMORY_CORRUPTION, session, "x", 1, 0, "e", 1, NOW)
    return encode_verdict(verdict, tenant_id="acme", user_id="u-1", agent_id="a1")


def test_a_verdict_naming_an_unknown_detector_is_refused_and_does_not_grow_the_state() -> None:
    path = JudgingPath()
    runaway(path, "s-1", steps=1)
    for i in range(200):
        path.send(forged_verdict(f"{'d' * 190}{i}"), b"s-1", topic=VERDICTS)
    assert {letter.code for letter in path.judged.dead_letters} == {"bad_stage_verdict"}
    assert path.states["s-1"].fired == []
    assert path.judged.kills == []


def test_an_oversize_record_becomes_a_small_dead_letter_with_its_size_and_digest() -> None:
    path = JudgingPath()
    huge = b'{"prompt": "' + b"A" * 1_040_000 + b'"}'
    path.send(huge, b"s-1")
    (letter,) = path.judged.dead_letters
    assert letter.code == "too_large"
    record = dead_letter(letter, source_topic=EVENTS)
    doc = orjson.loads(record.value)
    assert (doc["size"], doc["shape"]["kind"]) == (len(huge), "unparsed")
    assert b"AAAA" not in record.value
    assert len(record.value) < 1_000


def test_a_dead_letter_keeps_the_shape_of_the_record_not_its_values() -> None:
    raw = orjson.dumps({**envelope("s-1", 1), "kind": "heartbeat", "prompt": "the secret plan"})
    shape = shape_of(raw)
    assert shape["fields"]["prompt"] == "string"
    assert "secret" not in orjson.dumps(shape).decode()


def test_invented_agent_ids_cannot_grow_a_session_without_limit() -> None:
    path = JudgingPath()
    for i in range(2_000):
        agent = "a" * 124 + f"{i:04d}"
        send(path, **envelope("s-1", 1, agent=agent), kind="heartbeat")
    state = path.states["s-1"]
    assert len(state.seen) == DetectorSettings().intake.max_agents_per_session
    assert path.largest_state < 8_192
    assert state.events == 2_000  # still judged, deduplicated by event id


def test_a_huge_seq_does_not_turn_the_agents_later_events_into_replays() -> None:
    path = JudgingPath()
    send(path, **envelope("s-1", 2**63 - 1), kind="heartbeat")
    runaway(path, "s-1")
    assert path.judged.killed() == {"s-1": "max_steps"}


def test_a_replayed_event_id_under_a_new_seq_counts_once() -> None:
    path = JudgingPath()
    for seq in (1, 2):
        fields = envelope("s-1", seq, kind="tool.called")
        fields["event_id"] = "same"
        send(path, **fields, **{"gen_ai.tool.name": "t", "gen_ai.tool.call.id": "c"}, args_digest="d")
    assert path.states["s-1"].steps == 1


def test_an_event_from_year_9999_does_not_blind_the_session_or_its_tenant() -> None:
    path = JudgingPath()
    send(path, **envelope("s-1", 1, t=253_402_300_799_000), kind="heartbeat")
    assert path.states["s-1"].last_event_ms == NOW  # judged as now, and counted
    runaway(path, "s-1", steps=60, t=NOW + 10)
    assert path.judged.killed() == {"s-1": "max_steps"}
    # The tenant's daily budget still follows today.
    for seq in range(1, 60):
        send(
            path,
            **envelope(f"spend-{seq}", 1, t=NOW + seq),
            kind="turn.completed",
            **{"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1},
            cost_usd=9.0,
        )
    assert "tenant_daily_budget" in path.judged.killed().values()


def test_a_timestamp_of_zero_does_not_kill_a_healthy_session_by_deadline() -> None:
    path = JudgingPath()
    send(path, **envelope("s-1", 1, t=0), kind="session.started")
    send(path, **envelope("s-1", 2, t=NOW + 1), kind="heartbeat")
    path.tick(1_000)
    assert path.judged.kills == []
    assert path.states["s-1"].first_event_ms == NOW


def test_an_absurd_turn_cost_is_a_dead_letter_not_a_tenant_wide_kill() -> None:
    path = JudgingPath()
    usage = {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1}
    send(path, **envelope("s-1", 1), kind="turn.completed", **usage, cost_usd=1e9)
    send(path, **envelope("s-2", 1), kind="turn.completed", **usage, cost_usd=0.5)
    (letter,) = path.judged.dead_letters
    assert letter.code == "implausible_value"
    assert "max_turn_cost_usd" in letter.reason
    assert path.judged.kills == []


def test_one_tenants_errors_do_not_open_the_tool_for_another_tenant() -> None:
    path = JudgingPath()
    for i in range(25):
        send(
            path,
            **envelope(f"bad-{i}", 1, tenant="noisy"),
            kind="tool.returned",
            **{"gen_ai.tool.name": "search", "gen_ai.tool.call.id": "c", "error.type": "Timeout"},
            status="error",
            latency_ms=1.0,
        )
    (opened,) = path.judged.circuits
    assert (opened.target, opened.tenant_id) == ("search", "noisy")


def test_a_session_id_claimed_by_a_second_tenant_is_refused() -> None:
    path = JudgingPath()
    send(path, **envelope("s-1", 1), kind="heartbeat")
    send(path, **envelope("s-1", 1, agent="intruder", tenant="other"), kind="heartbeat")
    (letter,) = path.judged.dead_letters
    assert letter.code == "owner_mismatch"
    assert path.states["s-1"].tenant_id == "acme"


@pytest.mark.parametrize("seq", ["true", '"123456"', "42.0"])
def test_numbers_on_the_wire_are_not_coerced(seq: str) -> None:
    raw = orjson.dumps(envelope("s-1", 1, kind="heartbeat")).replace(b'"seq":1', b'"seq":' + seq.encode())
    path = JudgingPath()
    path.send(raw, b"s-1")
    (letter,) = path.judged.dead_letters
    assert "seq" in letter.reason


def test_a_time_written_as_a_float_is_a_dead_letter_with_the_reason() -> None:
    raw = orjson.dumps({**envelope("s-1", 1), "kind": "heartbeat", "event_time_ms": 1767225600000.0})
    path = JudgingPath()
    path.send(raw, b"s-1")
    (letter,) = path.judged.dead_letters
    assert "event_time_ms" in letter.reason


def test_a_fault_inside_judging_is_a_dead_letter_and_the_batch_goes_on() -> None:
    path = JudgingPath()

    class Boom:
        name = "boom"

        def observe(self, state: SessionState, event: Any, now_ms: int) -> None:
            if event.agent_id == "poison":
                raise RuntimeError("a detector bug a crafted record found")

    suite = path.pipeline.suite
    original = suite._policy
    suite._policy = lambda tenant, agent: (*original(tenant, agent), _armed(Boom()))  # type: ignore[method-assign]
    send(path, **envelope("s-p", 1, agent="poison"), kind="heartbeat")
    runaway(path, "s-1")
    (letter,) = path.judged.dead_letters
    assert (letter.code, type(letter.error)) == ("internal_error", RuntimeError)
    assert path.judged.killed() == {"s-1": "max_steps"}


def _armed(detector: Any) -> Any:
    from detectors import Armed

    return Armed(detector)


def test_the_contract_still_reads_what_the_sdk_writes() -> None:
    event = parse_event(orjson.dumps({**envelope("s-1", 5), "kind": "heartbeat"}))
    assert parse_event(encode_event(event)) == event
