"""The worker's batch step without a broker: dead letters, one kill per session, signed commands."""

from __future__ import annotations

import orjson

from agents_contract import CommandSigner, ControlAck, encode_event, kill_command_id
from detectors import (
    Armed,
    CeilingLimits,
    DetectorSuite,
    FailureClass,
    SessionState,
    StepCeiling,
    Verdict,
    ceilings,
)
from streams import Pipeline, RawRecord
from streams.worker._pipeline import encode_verdict
from tests.detectors.test_ceilings import _envelope, tool_call

SIGNER = CommandSigner("p" * 32)


def pipeline(max_steps: int = 2) -> Pipeline:
    limits = CeilingLimits(max_steps=max_steps, max_tokens=None, max_cost_usd=None)
    return Pipeline(DetectorSuite(ceilings(limits), clock=lambda: 9_000), SIGNER, clock=lambda: 9_000)


def record(value: bytes | None, key: bytes | None = b"s-1", offset: int = 0) -> RawRecord:
    return RawRecord(key, value, partition=0, offset=offset)


def events(*seqs: int) -> list[RawRecord]:
    return [record(encode_event(tool_call(seq)), offset=seq) for seq in seqs]


def test_malformed_records_become_dead_letters_with_reasons_and_the_rest_is_judged() -> None:
    states: dict[str, SessionState] = {}
    batch = [record(b"{oops"), record(None), *events(1), record(encode_event(tool_call(2)), key=b"other")]
    result = pipeline().judge(batch, states.get)
    reasons = [d.reason for d in result.dead_letters]
    assert len(reasons) == 3
    assert reasons[0].startswith("not JSON")
    assert "tombstone" in reasons[1]
    assert "session_id" in reasons[2]
    assert result.events == 1
    assert result.dead_letters[0].record.value == b"{oops"


def test_a_session_is_killed_once_with_a_signed_command_and_an_alert() -> None:
    states: dict[str, SessionState] = {}
    p = pipeline(max_steps=2)
    result = p.judge(events(1, 2, 3, 4), states.get)
    (kill,) = result.kills
    assert SIGNER.verify(kill)
    assert (kill.target, kill.detector, kill.breach_seq) == ("s-1", "max_steps", 3)
    (alert,) = result.alerts
    assert (alert.command_id, alert.action, alert.tenant_id) == (kill.command_id, "killed", "acme")
    # Later batches about the same session issue nothing more.
    states.update({sid: st for sid, (st, _) in result.dirty.items()})
    later = p.judge(events(5, 6), states.get)
    assert later.kills == []
    assert later.alerts == []


def test_a_replayed_batch_after_a_crash_counts_nothing_twice() -> None:
    states: dict[str, SessionState] = {}
    p = pipeline(max_steps=10)
    first = p.judge(events(1, 2, 3), states.get)
    states.update({sid: st for sid, (st, _) in first.dirty.items()})
    again = p.judge(events(1, 2, 3), states.get)
    assert again.duplicates == 3
    assert states["s-1"].steps == 3


def test_alert_records_carry_no_event_content() -> None:
    result = pipeline(max_steps=1).judge(events(1, 2), {}.get)
    body = orjson.loads(result.alerts[0].to_bytes())
    assert body["evidence"]["steps"] == 2
    assert "args_digest" not in orjson.dumps(body).decode()


def ack(seq: int, command_id: str, at_ms: int = 9_500) -> RawRecord:
    event = ControlAck(
        **{**_envelope(seq), "event_time_ms": at_ms},
        command_id=command_id,
        outcome="stopped",
        kill_latency_ms=12.5,
    )
    return record(encode_event(event), offset=seq)


def test_the_agents_acknowledgement_settles_the_kill_once() -> None:
    states: dict[str, SessionState] = {}
    p = pipeline(max_steps=1)
    first = p.judge(events(1, 2), states.get)
    (kill,) = first.kills
    state = first.dirty["s-1"][0]
    assert (state.kill_issued_ms, state.acked_ms, state.awaiting_ack) == (9_000, 0, True)
    states.update({sid: st for sid, (st, _) in first.dirty.items()})
    # `stopping` only: the agent refuses further steps, but its run has not ended yet.
    stopping = ControlAck(**_envelope(3), command_id=kill.command_id, outcome="stopping")
    assert p.judge([record(encode_event(stopping), offset=3)], states.get).acks == []
    assert state.awaiting_ack
    settled = p.judge([ack(4, kill.command_id), ack(5, kill.command_id)], states.get)
    assert [(a.command_id, s.session_id) for a, s in settled.acks] == [(kill.command_id, "s-1")]
    assert (state.acked_ms, state.awaiting_ack) == (9_500, False)
    assert settled.kinds == {"control.ack": 2}


def test_the_agent_stopping_on_another_kill_of_its_session_settles_this_one() -> None:
    # After a restart the worker may decide the kill by another detector than the command the agent was
    # sent (a keyed-stage verdict read before the session's backlog), or an operator killed it by hand.
    states: dict[str, SessionState] = {}
    p = pipeline(max_steps=1)
    first = p.judge(events(1, 2), states.get)
    states.update({sid: st for sid, (st, _) in first.dirty.items()})
    settled = p.judge([ack(3, kill_command_id("s-1", "agent_budget"))], states.get)
    assert len(settled.acks) == 1
    assert not states["s-1"].awaiting_ack


def test_a_late_acknowledgement_resolves_the_escalation_page() -> None:
    states: dict[str, SessionState] = {}
    p = pipeline(max_steps=1)
    first = p.judge(events(1, 2), states.get)
    (kill,) = first.kills
    state = first.dirty["s-1"][0]
    state.escalated_ms = 25_000  # the worker's timer paged: nobody acknowledged in time
    states["s-1"] = state
    late = p.judge([ack(3, kill.command_id, at_ms=40_000)], states.get)
    (resolution,) = late.alerts
    assert (resolution.alert_id, resolution.status) == (f"{kill.command_id}-unacknowledged", "resolved")
    assert resolution.observed == 31.0  # seconds from the kill (t=9 s) to the acknowledgement (t=40 s)


def moded(mode: str) -> Pipeline:
    suite = DetectorSuite([Armed(StepCeiling(2), mode)], clock=lambda: 9_000)  # type: ignore[arg-type]
    return Pipeline(suite, SIGNER, clock=lambda: 9_000)


def test_warn_mode_alerts_once_and_never_kills() -> None:
    states: dict[str, SessionState] = {}
    p = moded("warn")
    result = p.judge(events(1, 2, 3, 4, 5), states.get)
    assert result.kills == []
    (alert,) = result.alerts
    assert (alert.action, alert.severity, alert.command_id) == ("warned", "warning", None)
    assert alert.evidence["mode"] == "warn"
    assert alert.evidence["event_ids"][-1] == "e-a1-3"
    (verdict,) = result.verdicts
    assert verdict.mode == "warn"
    states.update({sid: st for sid, (st, _) in result.dirty.items()})
    assert p.judge(events(6, 7), states.get).alerts == []


def test_shadow_mode_only_counts_the_verdict() -> None:
    result = moded("shadow").judge(events(1, 2, 3, 4), {}.get)
    assert (result.kills, result.alerts) == ([], [])
    assert [v.mode for v in result.verdicts] == ["shadow"]


def test_a_stage_verdict_on_the_verdicts_topic_kills_through_the_same_path() -> None:
    suite = DetectorSuite([], clock=lambda: 9_000)
    p = Pipeline(suite, SIGNER, clock=lambda: 9_000, verdicts_topic="v")
    states: dict[str, SessionState] = {}
    states.update({sid: st for sid, (st, _) in p.judge(events(1), states.get).dirty.items()})
    verdict = Verdict(
        detector="memory_leak",
        failure_class=FailureClass.MEMORY_CORRUPTION,
        session_id="s-1",
        reason="content of another user surfaced",
        observed=1,
        threshold=0,
        event_id="e-a1-1",
        seq=1,
        event_time_ms=1_001,
        evidence={"owner_session": "s-0"},
    )
    value = encode_verdict(verdict, tenant_id="acme", user_id="u-1", agent_id="a1")
    result = p.judge([RawRecord(b"s-1", value, 0, 0, "v"), RawRecord(b"s-1", value, 0, 1, "v")], states.get)
    (kill,) = result.kills
    assert (kill.target, kill.detector, kill.evidence["owner_session"]) == ("s-1", "memory_leak", "s-0")
    assert SIGNER.verify(kill)
    (alert,) = result.alerts
    assert (alert.action, alert.failure_class) == ("killed", "memory_corruption")
    bad = p.judge([RawRecord(b"s-1", b'{"detector": 1}', 0, 2, "v")], states.get)
    (letter,) = bad.dead_letters
    assert letter.reason.startswith("not a stage verdict")


def test_a_session_leaves_the_table_only_once_nothing_more_can_happen_to_it() -> None:
    from streams.worker._pipeline import Retention

    keep = Retention(ended_ms=1_000, killed_ms=5_000, idle_ms=60_000)
    state = SessionState("s-1", heard_ms=10_000)
    assert not keep.evictable(state, 69_999)
    assert keep.evictable(state, 70_000)  # idle
    state.ended = True
    assert keep.evictable(state, 11_000)  # ended, past its grace
    killed = SessionState("s-2", heard_ms=10_000, killed_by="max_steps", kill_issued_ms=10_000)
    assert not keep.evictable(killed, 10_000_000)  # its kill is still waiting for an acknowledgement
    killed.acked_ms = 12_000
    assert not keep.evictable(killed, 16_999)
    assert keep.evictable(killed, 17_000)


def test_settled_sessions_depart_in_the_order_their_grace_runs_out_and_each_once() -> None:
    from streams.worker._pipeline import Departures, Retention

    departures = Departures(Retention(ended_ms=1_000, killed_ms=5_000, idle_ms=60_000))
    running = SessionState("running", heard_ms=10_000)
    ended = SessionState("ended", heard_ms=10_000, ended=True)
    waiting = SessionState("waiting", heard_ms=10_000, killed_by="max_steps", kill_issued_ms=10_000)
    acked = SessionState("acked", heard_ms=9_000, killed_by="max_steps", kill_issued_ms=9_000, acked_ms=9_500)
    for state in (running, ended, waiting, acked, ended):
        departures.offer(state)
    assert len(departures) == 2  # neither the running session nor the kill still waiting for its ack
    assert departures.due(10_999, 10) == []
    assert departures.due(11_000, 10) == ["ended"]
    assert departures.due(14_499, 10) == []
    # Heard of again after it was offered: it leaves at its later time, not the earlier one.
    acked.heard_ms = 20_000
    departures.offer(acked)
    assert departures.due(14_500, 10) == []
    waiting.escalated_ms = 12_000
    departures.offer(waiting)
    assert departures.due(30_000, 1) == ["waiting"]  # at most `limit` per call, earliest first
    assert departures.due(30_000, 10) == ["acked"]
    assert departures.due(10**9, 10) == []
    assert len(departures) == 0


class _TableData(dict[bytes, object]):
    """What `LiveStore` uses of the worker's Faust table store (`_restore.RestoringStore`)."""

    def note_partition(self, key: bytes, partition: int) -> None:
        self.setdefault(b"partition:" + key, partition)

    def discard(self, key: bytes) -> None:
        self.pop(key, None)


class _Table:
    def __init__(self) -> None:
        self.data = _TableData()


def test_a_settled_session_waits_out_its_grace_as_bytes_and_is_judged_again_when_heard_from() -> None:
    from streams.worker._pipeline import settled
    from streams.worker._store import LiveStore

    store = LiveStore(
        _Table(), SessionState, SessionState.from_bytes, SessionState.to_bytes, changelog_topic="changelog"
    )
    judge = pipeline(max_steps=2)
    result = judge.judge(events(1, 2), store.lookup)
    (state, _) = result.dirty["s-1"]
    running = SessionState("s-2", tenant_id="t", user_id="u", steps=1, partition=1)
    dirty = {"s-1": (state, 0), "s-2": (running, 1)}
    state.ended = True  # as if its agent had said session.ended
    written = store.checkpoint(dirty, cold=lambda key, state: settled(state))
    # Both reach the changelog; only the settled one is held as the bytes written.
    assert [(key, value) for _, _, key, value, _ in written] == [
        (b"s-1", state.to_bytes()),
        (b"s-2", running.to_bytes()),
    ]
    held = dict(store.entries())
    assert held["s-1"] == state.to_bytes()
    assert held["s-2"] is running
    assert store.peek(state.to_bytes()) == state
    assert isinstance(dict(store.entries())["s-1"], bytes)  # a peek leaves it cold
    # Heard from again (a late event), it is decoded and judged from where it was: its third step kills.
    (kill,) = judge.judge(events(3), store.lookup).kills
    assert kill.breach_seq == 3
    assert isinstance(dict(store.entries())["s-1"], SessionState)
