"""The keyed stages' judging step: verdicts back to the session's worker, tool circuits as signed commands."""

from __future__ import annotations

from typing import Any

import orjson

from agents_contract import CommandSigner, ToolReturned
from detectors import STAGES, DetectorSettings, StageRecord, Verdict, stage_records
from streams import RawRecord
from streams.worker._stages import StageJudge

SIGNER = CommandSigner("s" * 32)
T0 = 1_767_225_600_000


def failing_call(n: int, *, ok: bool = False, t: int = 0, tool: str = "payments") -> StageRecord:
    event = ToolReturned(
        event_id=f"e-{n}",
        session_id=f"s-{n}",
        agent_id="a1",
        tenant_id="acme",
        user_id=f"u-{n}",
        seq=1,
        event_time_ms=T0 + t,
        tool_name=tool,
        call_id=f"c{n}",
        status="ok" if ok else "error",
        error_type=None if ok else "TimeoutError",
        latency_ms=3.0,
    )
    (record,) = stage_records(event, STAGES)
    return record


def raw(records: list[StageRecord]) -> list[RawRecord]:
    return [RawRecord(r.routing_key, r.to_bytes(), 0, i) for i, r in enumerate(records)]


def judge_all(judge: StageJudge, records: list[StageRecord], states: dict[str, dict[str, Any]]) -> Any:
    result = judge.judge(raw(records), states.get)
    states.update({key: state for key, (state, _) in result.dirty.items()})
    return result


def settings(**circuit: Any) -> DetectorSettings:
    return DetectorSettings.model_validate({"tool_circuit": {"min_calls": 4, "open_s": 10, **circuit}})


def test_a_failing_tool_opens_its_circuit_with_a_signed_command_and_a_page_then_closes() -> None:
    judge = StageJudge(settings(), SIGNER, clock=lambda: T0 + 99)
    states: dict[str, dict[str, Any]] = {}
    result = judge_all(judge, [failing_call(n, t=n) for n in range(4)], states)
    (command,) = result.commands
    assert (command.scope, command.target) == ("tool", "payments")
    assert SIGNER.verify(command)
    assert command.evidence["circuit"] == "open"
    assert (command.evidence["generation"], command.evidence["open_ms"]) == (1, 10_000)
    (alert,) = result.alerts
    assert (alert.action, alert.severity, alert.status) == ("tripped", "critical", "firing")
    assert alert.summary == "[tripwire] tool payments circuit open: tool_circuit"
    # A circuit is not a session's verdict: nothing goes back to a session's worker to kill it.
    assert result.verdicts == []
    # After the open period the first success closes it: one command, the page resolved.
    closed = judge_all(judge, [failing_call(9, ok=True, t=11_000)], states)
    (close,) = closed.commands
    assert close.evidence["circuit"] == "closed"
    assert close.command_id != command.command_id
    (resolved,) = closed.alerts
    assert (resolved.alert_id, resolved.status) == (alert.alert_id, "resolved")


def test_warn_mode_pages_without_switching_the_tool_off_and_shadow_does_neither() -> None:
    records = [failing_call(n, t=n) for n in range(4)]
    warned = StageJudge(settings(mode="warn"), SIGNER, clock=lambda: T0).judge(raw(records), {}.get)
    assert warned.commands == []
    assert [a.action for a in warned.alerts] == ["warned"]
    shadow = StageJudge(settings(mode="shadow"), SIGNER, clock=lambda: T0).judge(raw(records), {}.get)
    assert (shadow.commands, shadow.alerts) == ([], [])
    assert [v.mode for v in shadow.given] == ["shadow"]


def test_a_replayed_batch_counts_nothing_twice() -> None:
    judge = StageJudge(settings(), SIGNER, clock=lambda: T0)
    states: dict[str, dict[str, Any]] = {}
    first = [failing_call(n, t=n) for n in range(3)]
    assert judge_all(judge, first, states).commands == []
    # The worker crashed before committing: the same three records come again, then one new one.
    assert judge_all(judge, first, states).commands == []
    assert len(judge_all(judge, [failing_call(3, t=3)], states).commands) == 1


def test_session_verdicts_go_back_keyed_by_the_session_with_who_and_what() -> None:
    limits = {"tenant_daily_budget": {"max_cost_usd": 1.0}}
    judge = StageJudge(DetectorSettings.model_validate(limits), SIGNER, clock=lambda: T0)
    record = StageRecord(
        "tenant_daily_budget",
        "acme",
        "e-1",
        "s-9",
        "acme",
        "u-1",
        "a1",
        4,
        T0,
        "turn.completed",
        {"usd": 1.5},
    )
    result = judge.judge(raw([record]), {}.get)
    ((key, value),) = result.verdicts
    assert key == b"s-9"
    data = orjson.loads(value)
    assert (data["tenant_id"], data["user_id"], data["agent_id"]) == ("acme", "u-1", "a1")
    verdict = Verdict.from_description(data)
    assert (verdict.detector, verdict.session_id, verdict.mode) == ("tenant_daily_budget", "s-9", "enforce")
    assert verdict.evidence["tenant_spend_usd"] == 1.5


def test_a_record_that_does_not_parse_is_set_aside_with_the_reason() -> None:
    judge = StageJudge(DetectorSettings(), SIGNER, clock=lambda: T0)
    result = judge.judge([RawRecord(b"x", b"[1, 2]", 0, 0), RawRecord(b"y", b"{", 0, 1)], {}.get)
    assert [d.reason.split(":")[0] for d in result.dead_letters] == ["not a stage record"] * 2


def test_stage_keys_expire_with_their_windows() -> None:
    from detectors import DetectorSettings

    judge = StageJudge(DetectorSettings(), CommandSigner("s" * 32), lambda: 0)
    day = 86_400_000
    now = 100 * day + 5_000
    assert not judge.expired("tenant_daily_budget:acme", {"_at": 99 * day + 1}, now)  # yesterday stays
    assert judge.expired("tenant_daily_budget:acme", {"_at": 98 * day + 1}, now)
    assert not judge.expired("agent_budget:acme/a1", {"_at": now - 3_600_000}, now)
    assert judge.expired("agent_budget:acme/a1", {"_at": now - 2 * 3_600_000 - 1}, now)
    # A circuit that ever opened keeps its generation for ever; one that never did expires.
    assert judge.expired("tool_circuit:acme/search", {"_at": now - 10 * 60_000}, now)
    assert not judge.expired("tool_circuit:acme/search", {"_at": 0, "generation": 3}, now)
    assert not judge.expired("memory_leak:00000000000000ff", {"_at": now - 29 * day}, now)
    assert judge.expired("memory_leak:00000000000000ff", {"_at": now - 31 * day}, now)
    assert judge.expired("unknown_stage:x", {}, now)  # a stage switched off
