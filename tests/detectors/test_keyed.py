"""The keyed detectors: a tenant's day, an agent's rolling spend, a tool across the fleet, content and memory
keys owned by the user who first wrote them. Events go through `stage_records` and each record to its
detector with one state per stage key, as the stage worker does (without a broker)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agents_contract import AgentEvent, MemoryRead, MemoryWritten, ToolReturned, TurnCompleted, fingerprints
from detectors import (
    STAGES,
    AgentRollingBudget,
    ContentOwnership,
    DetectorSettings,
    FailureClass,
    KeyedDetector,
    MemoryNamespace,
    StageRecord,
    TenantDailyBudget,
    ToolCircuit,
    Verdict,
    build_keyed_policy,
    keyed_detectors,
    stage_records,
)

DAY = 86_400_000
T0 = 19_700 * DAY  # a UTC midnight
SECRET = "the quarterly revenue forecast for the northern region is forty two million dollars"


class Fleet:
    """Sessions of many users and agents whose stage records meet per key, each key with its own state."""

    def __init__(self, *detectors: KeyedDetector) -> None:
        self.detectors = {d.stage: d for d in detectors}
        self.states: dict[bytes, dict[str, Any]] = {}
        self.seqs: dict[str, int] = {}

    def envelope(
        self, t: int, session: str = "s-1", user: str = "u-1", tenant: str = "acme", agent: str = "a1"
    ) -> dict[str, Any]:
        seq = self.seqs[session] = self.seqs.get(session, 0) + 1
        return {
            "event_id": f"e-{session}-{seq}",
            "session_id": session,
            "agent_id": agent,
            "tenant_id": tenant,
            "user_id": user,
            "seq": seq,
            "event_time_ms": T0 + t,
        }

    def send(self, event: AgentEvent) -> list[Verdict]:
        out: list[Verdict] = []
        for made in stage_records(event, STAGES):
            record = StageRecord.from_bytes(made.to_bytes())  # as it crosses the stages topic
            detector = self.detectors.get(record.stage)
            if detector is not None:
                out += detector.observe(self.states.setdefault(record.routing_key, {}), record)
        return out

    def turn(self, t: int, usd: float, **who: str) -> list[Verdict]:
        event = TurnCompleted(
            **self.envelope(t, **who), model="m", input_tokens=10, output_tokens=10, cost_usd=usd
        )
        return self.send(event)

    def result(
        self, t: int, ok: bool = True, tool: str = "search", fps: list[int] | None = None, **who: str
    ) -> list[Verdict]:
        env = self.envelope(t, **who)
        event = ToolReturned(
            **env,
            tool_name=tool,
            call_id=f"c-{env['event_id']}",
            status="ok" if ok else "error",
            error_type=None if ok else "TimeoutError",
            latency_ms=1.0,
            fingerprints=fps,
        )
        return self.send(event)

    def write(
        self, t: int, fps: list[int], store: str = "notes", key: str = "k1", **who: str
    ) -> list[Verdict]:
        return self.send(MemoryWritten(**self.envelope(t, **who), store=store, key=key, fingerprints=fps))

    def read(
        self, t: int, fps: list[int], store: str = "notes", key: str = "k1", **who: str
    ) -> list[Verdict]:
        return self.send(MemoryRead(**self.envelope(t, **who), store=store, key=key, fingerprints=fps))


def _records(event: AgentEvent, stages: frozenset[str] = STAGES) -> list[tuple[str, str, dict[str, Any]]]:
    return [(r.stage, r.key, r.values) for r in stage_records(event, stages)]


# stage_records and StageRecord


def test_a_costly_turn_feeds_the_tenant_day_and_the_agent_budget() -> None:
    env = Fleet().envelope(0)
    turn = TurnCompleted(**env, model="m", input_tokens=1, output_tokens=1, cost_usd=0.25)
    assert _records(turn) == [
        ("tenant_daily_budget", "acme", {"usd": 0.25}),
        ("agent_budget", "acme/a1", {"usd": 0.25}),
    ]
    (record,) = stage_records(turn, frozenset({"agent_budget"}))
    assert record.routing_key == b"agent_budget:acme/a1"
    assert (record.session_id, record.event_time_ms, record.kind) == ("s-1", T0, "turn.completed")
    free = TurnCompleted(**env, model="m", input_tokens=1, output_tokens=1, cost_usd=0.0)
    assert stage_records(free, STAGES) == []


def test_a_tool_result_feeds_the_circuit_and_each_distinct_fingerprint_once() -> None:
    env = Fleet().envelope(0)
    event = ToolReturned(
        **env, tool_name="search", call_id="c1", status="error", error_type="TimeoutError", latency_ms=1.0,
        fingerprints=[1, 255, 1],
    )  # fmt: skip
    circuit = {"ok": False, "error": "TimeoutError", "tool": "search", "fleet": False}
    # A tool's circuit is the tenant's own by default: one tenant's errors do not switch it off for others.
    assert _records(event) == [
        ("tool_circuit", f"{env['tenant_id']}/search", circuit),
        ("memory_leak", "0000000000000001", {"read": True, "tool": "search"}),
        ("memory_leak", "00000000000000ff", {"read": True, "tool": "search"}),
    ]
    fleet = stage_records(event, frozenset({"tool_circuit"}), fleet_tools=True)
    expected = [("tool_circuit", "search", {**circuit, "fleet": True})]
    assert [(r.stage, r.key, r.values) for r in fleet] == expected


def test_memory_events_feed_content_ownership_and_the_memory_key() -> None:
    env = Fleet().envelope(0)
    written = MemoryWritten(**env, store="notes", key="k1", fingerprints=[7, 7])
    assert _records(written) == [
        ("memory_leak", "0000000000000007", {"read": False, "store": "notes"}),
        ("memory_namespace_leak", "notes/k1", {"read": False, "store": "notes"}),
    ]
    read = MemoryRead(**env, store="notes", key="k1", fingerprints=[7])
    assert [v["read"] for _, _, v in _records(read)] == [True, True]
    assert _records(read, frozenset({"tenant_daily_budget"})) == []


_GOOD = ["tool_circuit", "search", "e", "s", "t", "u", "a", 1, 2, "tool.returned", {"ok": True}]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 10_000, "not JSON"),
        (b"{}", "array of 11"),
        (orjson.dumps([*_GOOD, "extra"]), "array of 11"),
        (orjson.dumps(["no_such_stage", *_GOOD[1:]]), "is not one of"),
        (orjson.dumps([*_GOOD[:3], 3, *_GOOD[4:]]), "must be strings"),
        (orjson.dumps([*_GOOD[:7], 1.5, *_GOOD[8:]]), "must be integers"),
        (orjson.dumps([*_GOOD[:8], "2", *_GOOD[9:]]), "must be integers"),
        (orjson.dumps([*_GOOD[:10], ["ok"]]), "values must be an object"),
    ],
)
def test_a_stage_record_that_is_not_one_is_refused_with_value_error(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        StageRecord.from_bytes(raw)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.one_of(
        st.binary(),
        st.lists(_JSON, min_size=11, max_size=11).map(orjson.dumps),
        st.lists(st.sampled_from(_GOOD) | _JSON, min_size=11, max_size=11).map(orjson.dumps),
    )
)
def test_any_bytes_give_a_stage_record_or_a_value_error(raw: bytes) -> None:
    try:
        record = StageRecord.from_bytes(raw)
    except ValueError:
        return
    assert record.stage in STAGES
    assert StageRecord.from_bytes(record.to_bytes()) == record


def test_a_record_a_detector_cannot_judge_is_set_aside_and_the_stage_goes_on() -> None:
    from agents_contract import CommandSigner
    from streams import RawRecord
    from streams.worker._stages import StageJudge

    bad = orjson.dumps(
        ["memory_namespace_leak", "x/k", "e", "s", "t", "u", "a", 1, 2, "memory.read", {"store": []}]
    )
    good = orjson.dumps(
        ["tenant_daily_budget", "t", "e2", "s", "t", "u", "a", 2, 3, "turn.completed", {"usd": 1.0}]
    )
    judge = StageJudge(DetectorSettings(), CommandSigner("k" * 32), clock=lambda: 0)
    result = judge.judge([RawRecord(b"x", bad, 0, 0), RawRecord(b"y", good, 0, 1)], {}.get)
    (letter,) = result.dead_letters
    assert letter.reason.startswith("memory_namespace_leak could not judge it: TypeError")
    assert "tenant_daily_budget:t" in result.dirty


# TenantDailyBudget


def test_sessions_of_one_tenant_together_cross_its_daily_budget() -> None:
    f = Fleet(TenantDailyBudget(max_cost_usd=10))
    assert f.turn(1_000, 6, session="s-1") == []
    assert f.turn(2_000, 3, session="s-2") == []
    assert f.turn(2_500, 9, session="s-9", tenant="globex") == []
    (verdict,) = f.turn(3_000, 2, session="s-2")
    assert verdict.session_id == "s-2"
    assert verdict.failure_class is FailureClass.RUNAWAY_EXECUTION
    assert verdict.evidence["tenant_spend_usd"] == 11
    assert verdict.evidence["day_start_ms"] == T0
    assert (verdict.observed, verdict.threshold) == (11, 10)
    assert "tenant acme" in verdict.reason
    # Every later spending session of the tenant that day is stopped too.
    (later,) = f.turn(4_000, 0.5, session="s-1")
    assert (later.session_id, later.evidence["tenant_spend_usd"]) == ("s-1", 11.5)


def test_a_new_utc_day_starts_from_zero_and_a_closed_day_is_ignored() -> None:
    f = Fleet(TenantDailyBudget(max_cost_usd=10))
    assert f.turn(DAY - 1_000, 9) == []
    assert f.turn(DAY + 1_000, 9) == []
    # Spend stamped in the day that has closed counts for neither.
    assert f.turn(DAY - 500, 100, session="s-late") == []
    (verdict,) = f.turn(DAY + 2_000, 2)
    assert verdict.evidence["tenant_spend_usd"] == 11
    assert verdict.evidence["day_start_ms"] == T0 + DAY


# AgentRollingBudget


def test_an_agents_spend_sums_across_its_sessions_within_the_window() -> None:
    f = Fleet(AgentRollingBudget(max_cost_usd=10, window_ms=3_600_000))
    assert f.turn(0, 6, session="s-1") == []
    assert f.turn(60_000, 6, session="s-2", agent="a2") == []
    (verdict,) = f.turn(120_000, 5, session="s-3")
    assert verdict.session_id == "s-3"
    assert verdict.evidence["agent_id"] == "a1"
    assert verdict.evidence["agent_spend_usd"] == 11
    assert "agent a1 of tenant acme" in verdict.reason


def test_spend_older_than_the_window_drops_out() -> None:
    f = Fleet(AgentRollingBudget(max_cost_usd=10, window_ms=3_600_000))
    assert f.turn(0, 6) == []
    assert f.turn(3_600_000, 5) == []  # the first spend is an hour old
    assert f.turn(3_700_000, 4) == []  # 9 within the hour
    assert f.turn(100_000, 50, session="s-late") == []  # too old for the window
    assert len(f.turn(3_800_000, 2)) == 1


# ToolCircuit


def _circuit() -> ToolCircuit:
    return ToolCircuit(window_ms=60_000, min_calls=10, error_ratio=0.5, open_ms=30_000)


def _trip(f: Fleet, tool: str = "search") -> Verdict:
    for i in range(9):
        assert f.result(i * 1_000, ok=i % 2 == 1, tool=tool) == []
    (verdict,) = f.result(9_000, ok=False, tool=tool, session="s-9")
    return verdict


def test_a_tool_below_min_calls_never_opens() -> None:
    f = Fleet(_circuit())
    assert all(f.result(i * 1_000, ok=False) == [] for i in range(9))


def test_half_of_min_calls_failing_opens_the_circuit_for_the_tool() -> None:
    f = Fleet(_circuit())
    verdict = _trip(f)
    assert verdict.failure_class is FailureClass.CASCADING_FAILURE
    assert verdict.session_id == "s-9"
    e = verdict.evidence
    assert (e["scope"], e["tool"], e["circuit"], e["generation"]) == ("tool", "search", "open", 1)
    assert (e["open_ms"], e["calls"], e["errors"]) == (30_000, 10, 6)
    assert verdict.observed == 0.6
    # Another tool's calls are counted on their own.
    assert f.result(10_000, ok=False, tool="fetch") == []


def test_results_while_open_are_ignored_and_the_first_success_after_closes() -> None:
    f = Fleet(_circuit())
    _trip(f)
    assert all(f.result(9_000 + i * 1_000, ok=False) == [] for i in range(30))
    (closed,) = f.result(39_000, ok=True)
    assert (closed.evidence["circuit"], closed.evidence["generation"]) == ("closed", 1)
    assert f.result(40_000, ok=False) == []  # counting starts again from nothing


def test_the_first_failure_after_the_open_period_opens_it_again() -> None:
    f = Fleet(_circuit())
    _trip(f)
    (again,) = f.result(40_000, ok=False)
    assert (again.evidence["circuit"], again.evidence["generation"]) == ("open", 2)
    assert f.result(69_000, ok=True) == []
    (closed,) = f.result(70_000, ok=True)
    assert (closed.evidence["circuit"], closed.evidence["generation"]) == ("closed", 2)


def test_a_healthy_error_rate_never_opens_the_circuit() -> None:
    f = Fleet(_circuit())
    assert all(f.result(i * 500, ok=i % 3 != 0) == [] for i in range(1_000))


@given(st.lists(st.tuples(st.integers(0, 20_000), st.booleans()), max_size=200))
def test_the_circuit_alternates_open_and_closed_with_rising_generations(
    steps: list[tuple[int, bool]],
) -> None:
    f = Fleet(ToolCircuit(window_ms=10_000, min_calls=3, error_ratio=0.5, open_ms=5_000))
    t, last = 0, ("closed", 0)
    for dt, ok in steps:
        t += dt
        for verdict in f.result(t, ok=ok):
            change = (verdict.evidence["circuit"], verdict.evidence["generation"])
            if change[0] == "open":
                assert change[1] == last[1] + 1
            else:
                assert last == ("open", change[1])
            last = change


# ContentOwnership


def test_content_one_user_wrote_surfacing_for_another_user_is_a_leak() -> None:
    fps = fingerprints(SECRET)
    f = Fleet(ContentOwnership())
    assert f.write(0, fps, session="s-a", user="alice") == []
    leaks = f.read(1_000, fps, session="s-b", user="bob") + f.result(
        2_000, fps=fps, session="s-b", user="bob"
    )
    assert len(leaks) == 2 * len(fps)
    for verdict in leaks:
        assert verdict.failure_class is FailureClass.MEMORY_CORRUPTION
        assert verdict.session_id == "s-b"
        assert verdict.evidence["owner_session_id"] == "s-a"
        assert verdict.evidence["owner_user_id"] == "alice"
        assert verdict.evidence["crosses"] == "user"
        assert verdict.evidence["fingerprint"] in {f"{fp:016x}" for fp in fps}
        assert verdict.event_ids[0] == "e-s-a-1"
        described = orjson.dumps(verdict.describe()).decode()
        assert not any(word in described for word in ("revenue", "forecast", "million"))
    assert "search" in leaks[-1].reason


def test_reading_your_own_content_is_not_a_leak_but_another_tenant_reading_it_is() -> None:
    f = Fleet(ContentOwnership())
    f.write(0, [42], session="s-a", user="alice")
    assert f.read(1_000, [42], session="s-a2", user="alice") == []
    (verdict,) = f.read(2_000, [42], session="s-x", user="alice", tenant="globex")
    assert verdict.evidence["crosses"] == "tenant"


def test_content_written_by_two_users_is_common_and_never_a_leak() -> None:
    f = Fleet(ContentOwnership())
    f.write(0, [42], session="s-a", user="alice")
    assert f.write(1_000, [42], session="s-b", user="bob") == []
    assert f.read(2_000, [42], session="s-c", user="carol") == []
    assert f.result(3_000, fps=[42], session="s-c", user="carol") == []


def test_a_read_judged_before_the_owners_write_is_caught_when_the_write_arrives() -> None:
    # The reader's partition ran ahead of the writer's: the read (stamped later) is judged first.
    f = Fleet(ContentOwnership())
    assert f.read(2_000, [42], session="s-b", user="bob") == []
    assert f.read(500, [42], session="s-c", user="carol") == []  # stamped before the write: no leak
    (verdict,) = f.write(1_000, [42], session="s-a", user="alice")
    assert (verdict.session_id, verdict.evidence["owner_session_id"]) == ("s-b", "s-a")
    assert verdict.event_time_ms == T0 + 2_000


# MemoryNamespace


def test_a_memory_key_read_or_overwritten_by_another_user_is_a_leak() -> None:
    f = Fleet(MemoryNamespace())
    assert f.write(0, [1], session="s-a", user="alice") == []
    (read,) = f.read(1_000, [2], session="s-b", user="bob")
    assert read.session_id == "s-b"
    assert read.failure_class is FailureClass.MEMORY_CORRUPTION
    e = read.evidence
    assert (e["access"], e["memory_key"], e["owner_session_id"], e["owner_user_id"]) == (
        "read", "notes/k1", "s-a", "alice",
    )  # fmt: skip
    (overwrote,) = f.write(2_000, [3], session="s-b", user="bob")
    assert overwrote.evidence["access"] == "overwrote"
    assert f.read(3_000, [3], session="s-a2", user="alice") == []
    assert f.write(3_000, [3], session="s-a2", user="alice", key="k2") == []


def test_shared_stores_are_not_namespaces() -> None:
    f = Fleet(MemoryNamespace(shared_stores=["wiki"]))
    f.write(0, [1], store="wiki", session="s-a", user="alice")
    assert f.read(1_000, [1], store="wiki", session="s-b", user="bob") == []
    assert f.write(2_000, [1], store="wiki", session="s-b", user="bob") == []


def test_a_key_read_judged_before_its_first_write_is_caught_only_if_read_after_it() -> None:
    f = Fleet(MemoryNamespace())
    assert f.read(2_000, [1], session="s-b", user="bob") == []
    assert f.read(500, [1], session="s-c", user="carol") == []
    (verdict,) = f.write(1_000, [1], session="s-a", user="alice")
    assert (verdict.session_id, verdict.evidence["access"]) == ("s-b", "read")


@pytest.mark.parametrize("detector", [ContentOwnership, MemoryNamespace])
def test_a_read_stamped_before_the_write_but_judged_after_it_is_not_a_leak(detector: type) -> None:
    f = Fleet(detector())
    assert f.write(1_000, [1], session="s-a", user="alice") == []
    assert f.read(500, [1], session="s-b", user="bob") == []


def test_the_first_writer_of_a_key_by_event_time_owns_it_whichever_write_is_judged_first() -> None:
    f = Fleet(MemoryNamespace())
    assert f.write(2_000, [1], session="s-b", user="bob") == []
    # Alice wrote it first (judged late): the key is hers, and bob's write overwrote it.
    (overwrite,) = f.write(1_000, [1], session="s-a", user="alice")
    assert (overwrite.session_id, overwrite.evidence["access"]) == ("s-b", "overwrote")
    assert overwrite.evidence["owner_session_id"] == "s-a"
    assert f.read(3_000, [1], session="s-a2", user="alice") == []
    (read,) = f.read(3_000, [1], session="s-b2", user="bob")
    assert read.evidence["access"] == "read"


# Settings


def test_default_settings_arm_all_five_keyed_detectors_enforcing() -> None:
    armed = keyed_detectors(DetectorSettings())
    assert {a.detector.stage: a.mode for a in armed} == dict.fromkeys(STAGES, "enforce")
    c = next(a.detector for a in armed if isinstance(a.detector, ToolCircuit))
    assert (c.window_ms, c.min_calls, c.error_ratio, c.open_ms) == (60_000, 20, 0.5, 30_000)


def test_a_disabled_keyed_detector_is_not_armed_and_modes_follow_config() -> None:
    s = DetectorSettings.model_validate(
        {"memory_leak": {"enabled": False}, "tool_circuit": {"mode": "shadow"}}
    )
    modes = {a.detector.stage: a.mode for a in keyed_detectors(s)}
    assert "memory_leak" not in modes
    assert modes["tool_circuit"] == "shadow"


def _limit(settings: DetectorSettings, tenant: str, agent: str, stage: str) -> Any:
    (detector,) = [
        a.detector for a in build_keyed_policy(settings)(tenant, agent) if a.detector.stage == stage
    ]
    return detector


def test_overrides_apply_to_their_own_tenant_and_agent_the_agents_winning() -> None:
    s = DetectorSettings.model_validate(
        {
            "tenant_daily_budget": {"max_cost_usd": 100},
            "tenants": {
                "acme": {"tenant_daily_budget": {"max_cost_usd": 5}, "agent_budget": {"max_cost_usd": 20}}
            },
            "agents": {"big": {"agent_budget": {"max_cost_usd": 200, "window_s": 60}}},
        }
    )
    assert _limit(s, "acme", "a1", "tenant_daily_budget").max_cost_usd == 5
    assert _limit(s, "globex", "a1", "tenant_daily_budget").max_cost_usd == 100
    assert _limit(s, "acme", "a1", "agent_budget").max_cost_usd == 20
    assert _limit(s, "globex", "a1", "agent_budget").max_cost_usd == 50
    big = _limit(s, "acme", "big", "agent_budget")
    assert (big.max_cost_usd, big.window_ms) == (200, 60_000)
    assert _limit(s, "acme", "big", "tenant_daily_budget").max_cost_usd == 5


def test_an_invalid_override_fails_naming_the_key() -> None:
    with pytest.raises(ValidationError, match=r"tenants\.acme\.tool_circuit\.error_ratio"):
        DetectorSettings.model_validate({"tenants": {"acme": {"tool_circuit": {"error_ratio": 2}}}})
