"""Stalled sessions: a session gone quiet (timer), and agents deadlocked waiting on each other."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import AgentWaiting, Heartbeat, SessionEnded, SessionStarted, ToolCalled, TurnStarted
from detectors import FailureClass, SessionState, TimedDetector, Verdict
from detectors._stalls import STALL_DETECTORS, Deadlock, Stall
from tests.detectors.sessions import T0, SessionUnderTest


class Session(SessionUnderTest):
    def wait(self, t: int, agent: str, on: str, seq: int | None = None) -> list[Verdict]:
        return self.send(AgentWaiting(**self.envelope(t, agent, seq), waiting_on_agent_id=on))

    def work(self, t: int, agent: str, seq: int | None = None) -> list[Verdict]:
        return self.send(
            ToolCalled(**self.envelope(t, agent, seq), tool_name="search", call_id=f"c{t}", args_digest="d")
        )

    def heartbeat(self, t: int, agent: str) -> list[Verdict]:
        return self.send(Heartbeat(**self.envelope(t, agent)))

    def end(self, t: int, agent: str = "a1") -> list[Verdict]:
        return self.send(SessionEnded(**self.envelope(t, agent)))

    def start(self, t: int, agent: str) -> list[Verdict]:
        return self.send(SessionStarted(**self.envelope(t, agent)))


# Stall


def test_stall_is_a_timed_detector_that_never_fires_on_events() -> None:
    stall = Stall()
    assert isinstance(stall, TimedDetector)
    s = Session(stall)
    assert s.work(0, "a1") == []
    assert s.work(10 * 60_000, "a1") == []


def test_a_session_quiet_past_the_limit_fires_on_the_timer() -> None:
    s = Session(Stall(quiet_ms=300_000))
    s.work(0, "a1")
    s.work(60_000, "a2")
    assert s.suite.expire(s.state, T0 + 60_000 + 300_000) == []
    (verdict,) = s.suite.expire(s.state, T0 + 60_000 + 301_000)
    assert verdict.detector == "stall"
    assert verdict.failure_class is FailureClass.MULTI_AGENT_DEADLOCK
    assert (verdict.observed, verdict.threshold) == (301_000, 300_000)
    assert (verdict.event_id, verdict.seq, verdict.evidence["kind"]) == ("", -1, "timer")
    assert (verdict.window_start_ms, verdict.window_end_ms) == (T0 + 60_000, T0 + 361_000)
    assert verdict.evidence["last_event_ms"] == T0 + 60_000
    assert "quiet for 5.02 min" in verdict.reason


def test_an_event_resets_the_quiet_time() -> None:
    s = Session(Stall(quiet_ms=300_000))
    s.work(0, "a1")
    s.heartbeat(250_000, "a1")
    assert s.suite.expire(s.state, T0 + 400_000) == []


def test_an_ended_session_never_stalls() -> None:
    stall = Stall(quiet_ms=1_000)
    s = Session(stall)
    s.work(0, "a1")
    s.end(500, "a1")
    assert stall.expire(s.state, T0 + 3_600_000) is None
    assert s.suite.expire(s.state, T0 + 3_600_000) == []


def test_a_team_session_ends_when_its_last_agent_has_not_its_first() -> None:
    s = Session(Stall(quiet_ms=300_000))
    s.start(0, "lead")
    s.start(1_000, "helper")
    s.work(2_000, "lead")
    s.end(3_000, "helper")  # the helper finished; the lead is still at work, then goes quiet
    assert not s.state.ended
    (verdict,) = s.suite.expire(s.state, T0 + 3_000 + 301_000)
    assert verdict.detector == "stall"
    # The same after a checkpoint: the count of agents still attached is part of the state.
    assert SessionState.from_bytes(s.state.to_bytes()).open_agents == 1
    s.end(400_000, "lead")
    assert s.state.ended
    s.start(500_000, "lead")  # attached again: judged again
    assert not s.state.ended


def test_a_session_with_no_events_yet_does_not_stall() -> None:
    assert Stall(quiet_ms=1_000).expire(SessionState("s-1"), T0) is None


# Deadlock


def test_three_agents_waiting_in_a_circle_fire_on_the_wait_that_closes_it() -> None:
    s = Session(Deadlock())
    assert s.wait(0, "planner", "researcher") == []
    assert s.wait(1_000, "researcher", "writer") == []
    (verdict,) = s.wait(2_000, "writer", "planner")
    assert verdict.detector == "deadlock"
    assert verdict.failure_class is FailureClass.MULTI_AGENT_DEADLOCK
    assert verdict.evidence["cycle"] == ["writer", "planner", "researcher"]
    assert verdict.evidence["waiting_since_ms"] == T0
    assert verdict.event_id == "e-writer-1"
    assert (
        "writer waits on planner, planner waits on researcher, researcher waits on writer" in verdict.reason
    )


def test_two_agents_waiting_on_each_other_fire() -> None:
    s = Session(Deadlock())
    s.wait(0, "a", "b")
    (verdict,) = s.wait(10, "b", "a")
    assert verdict.evidence["cycle"] == ["b", "a"]
    assert verdict.observed == 2


def test_a_chain_of_waits_without_a_cycle_does_not_fire() -> None:
    s = Session(Deadlock())
    assert s.wait(0, "a", "b") == []
    assert s.wait(1, "b", "c") == []
    assert s.wait(2, "c", "d") == []
    assert s.wait(3, "e", "a") == []


def test_an_agent_that_moves_on_is_no_longer_waiting() -> None:
    s = Session(Deadlock())
    s.wait(0, "a", "b")
    s.wait(1, "b", "c")
    # c got its answer and works again: a and b wait on a working agent, no cycle.
    s.work(2, "a")
    assert s.wait(3, "c", "a") == []
    assert s.state.slots["deadlock"] == [["b", "c", 1, T0 + 1], ["c", "a", 1, T0 + 3]]


def test_a_new_wait_replaces_the_agents_old_one() -> None:
    s = Session(Deadlock())
    s.wait(0, "a", "b")
    s.wait(1, "a", "c")
    # a no longer waits on b, so b waiting on a closes nothing.
    assert s.wait(2, "b", "a") == []


def test_heartbeats_do_not_end_a_wait() -> None:
    # A blocked agent may keep its heartbeat going: the deadlock is still a deadlock.
    s = Session(Deadlock())
    s.wait(0, "a", "b")
    s.heartbeat(1, "a")
    assert s.wait(2, "b", "a")


def test_a_wait_reordered_behind_the_agents_later_work_is_stale() -> None:
    s = Session(Deadlock())
    s.wait(0, "b", "a")
    s.work(2_000, "a", seq=2)
    # a's wait (seq 1) arrives after its later work (seq 2): a is not waiting any more.
    assert s.wait(1_000, "a", "b", seq=1) == []
    assert s.state.slots["deadlock"] == [["b", "a", 1, T0]]


def test_work_reordered_behind_a_later_wait_does_not_end_it() -> None:
    s = Session(Deadlock())
    s.wait(1_000, "a", "b", seq=2)
    s.work(500, "a", seq=1)
    assert s.wait(1_500, "b", "a")


def test_an_agent_waiting_on_itself_fires() -> None:
    s = Session(Deadlock())
    (verdict,) = s.wait(0, "a", "a")
    assert verdict.evidence["cycle"] == ["a"]
    assert "waits on itself" in verdict.reason


# Properties


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from("abcdef"), st.booleans()), max_size=80))
def test_deadlock_fires_exactly_when_the_wait_for_graph_has_a_cycle(
    steps: list[tuple[str, str, bool]],
) -> None:
    s = Session(Deadlock())
    graph: dict[str, str] = {}
    for t, (agent, on, waits) in enumerate(steps):
        if waits:
            graph[agent] = on
            node, hops = on, 0
            while node != agent and node in graph and hops <= len(graph):
                node, hops = graph[node], hops + 1
            expected = node == agent
            fired = s.wait(t, agent, on)
        else:
            graph.pop(agent, None)
            expected = False
            fired = s.work(t, agent)
        assert bool(fired) == expected
        s.state.fired.clear()


@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["a", "b", "c", "d"])), max_size=100))
def test_agents_that_only_wait_in_a_line_never_deadlock(steps: list[tuple[int, str]]) -> None:
    # a waits on b, b on c, c on d, d on no one: a healthy hand-off chain, however the waits interleave.
    nxt = {"a": "b", "b": "c", "c": "d"}
    s = Session(*[d() for d in STALL_DETECTORS])
    t = 0
    for gap, agent in steps:
        t += gap
        fired = s.wait(t, agent, nxt[agent]) if agent in nxt else s.work(t, agent)
        assert fired == []
    assert s.suite.expire(s.state, T0 + t + 1_000) == []


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_state_stays_small_and_json_after_ten_thousand_out_of_order_events(seed: int) -> None:
    rng = random.Random(seed)
    s = Session(*[d() for d in STALL_DETECTORS])
    agents = [f"agent-{n}" for n in range(60)] + ["a-very-long-agent-name-" + "x" * 90]
    for i in range(10_000):
        t = max(i * 100 + rng.randint(-8_000, 0), 0)
        agent = rng.choice(agents)
        if rng.random() < 0.5:
            s.wait(t, agent, rng.choice(agents))
        else:
            s.send(TurnStarted(**s.envelope(t, agent), model="m"))
        s.state.fired.clear()
    edges = s.state.slots["deadlock"]
    assert len(edges) <= 16
    assert len({edge[0] for edge in edges}) == len(edges)
    assert len(orjson.dumps(s.state.slots)) < 1_500
    assert SessionState.from_bytes(s.state.to_bytes()).slots == s.state.slots


def test_heartbeats_from_inside_a_long_call_are_not_silence_but_a_call_that_never_ends_is() -> None:
    s = Session(Stall(quiet_ms=300_000, max_call_ms=1_800_000))
    s.work(0, "a1")
    # A five-minute tool call: the SDK beats every minute from inside it.
    for minute in range(1, 40):
        s.send(Heartbeat(**s.envelope(minute * 60_000, "a1"), in_call_since_ms=T0 + 1_000))
        verdicts = s.suite.expire(s.state, T0 + minute * 60_000 + 30_000)
        if minute * 60_000 + 30_000 - 1_000 <= 1_800_000:
            assert verdicts == [], minute
        else:
            (verdict,) = verdicts
            assert verdict.evidence["in_call_since_ms"] == T0 + 1_000
            assert "inside one call for 30" in verdict.reason
            break
    else:
        raise AssertionError("a call running past max_call_ms never fired")


def test_a_call_that_ends_leaves_the_ordinary_quiet_rule() -> None:
    s = Session(Stall(quiet_ms=300_000, max_call_ms=600_000))
    s.send(Heartbeat(**s.envelope(0, "a1"), in_call_since_ms=T0))
    s.work(400_000, "a1")  # the call returned and the agent moved on
    assert s.suite.expire(s.state, T0 + 700_000) == []
    (verdict,) = s.suite.expire(s.state, T0 + 701_000)
    assert "quiet for" in verdict.reason


def test_an_agent_whose_heartbeats_stop_mid_call_stalls_as_quiet() -> None:
    s = Session(Stall(quiet_ms=300_000))
    s.send(Heartbeat(**s.envelope(0, "a1"), in_call_since_ms=T0))
    (verdict,) = s.suite.expire(s.state, T0 + 301_000)
    assert "quiet for" in verdict.reason
