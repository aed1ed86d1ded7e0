"""Context blowup: a hard context size, and a sudden jump over an agent's own recent median."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import AgentEvent, ContextAssembled, ContextSource, TurnCompleted
from detectors import FailureClass, SessionState, Verdict
from detectors._context import CONTEXT_DETECTORS, ContextBlowup, ContextFreshness, ContextScope
from tests.detectors.sessions import T0, SessionUnderTest


class Session(SessionUnderTest):
    t = 0

    def at(self, agent: str, t: int | None) -> dict[str, Any]:
        """The envelope of `agent`'s next event, a second after the last one unless `t` is given."""
        self.t += 1_000
        return self.envelope(self.t if t is None else t, agent)

    def turn(self, context: int, agent: str = "a1", t: int | None = None) -> list[Verdict]:
        event: AgentEvent = TurnCompleted(
            **self.at(agent, t),
            model="gpt-4o",
            input_tokens=context,
            output_tokens=300,
            cost_usd=0.01,
            context_tokens=context,
        )
        return self.suite.observe(self.state, event).verdicts

    def turns(self, contexts: list[int], agent: str = "a1") -> list[list[Verdict]]:
        return [self.turn(c, agent) for c in contexts]


def test_a_turn_above_the_hard_limit_fires_at_once() -> None:
    s = Session(ContextBlowup(max_context_tokens=200_000, growth_factor=None))
    assert s.turn(200_000) == []
    (verdict,) = s.turn(200_001)
    assert verdict.detector == "context_blowup"
    assert verdict.failure_class is FailureClass.CONTEXT_BLOWUP
    assert (verdict.observed, verdict.threshold) == (200_001, 200_000)
    assert verdict.evidence["model"] == "gpt-4o"
    assert "200,001 tokens" in verdict.reason


def test_a_sudden_jump_over_the_agents_median_fires() -> None:
    s = Session(ContextBlowup(growth_factor=4.0, min_turns=5))
    assert s.turns([8_000, 9_000, 10_000, 11_000, 12_000]) == [[]] * 5
    # 4 x the median of 10,000 is the limit.
    assert s.turn(40_000) == []
    (verdict,) = s.turn(50_000)
    assert verdict.evidence["median_context_tokens"] == pytest.approx(10_500)
    assert verdict.evidence["turns"] == 6
    assert verdict.threshold == pytest.approx(42_000)
    assert "4.8x the median" in verdict.reason


def test_growth_waits_for_min_turns() -> None:
    s = Session(ContextBlowup(growth_factor=4.0, min_turns=5))
    assert s.turns([1_000, 1_000, 1_000, 1_000, 90_000]) == [[]] * 5


def test_steady_growth_of_a_long_conversation_does_not_fire() -> None:
    # A conversation growing by 5% a turn: the median keeps up with it.
    s = Session(ContextBlowup(max_context_tokens=None, growth_factor=4.0, min_turns=5))
    contexts = [int(2_000 * 1.05**i) for i in range(60)]
    assert all(v == [] for v in s.turns(contexts))


def test_growth_judges_only_turns_past_the_absolute_floor() -> None:
    # A file read into a 6k context (6x) is no blowup; the same jump from 12k to 76k is.
    small = Session(ContextBlowup(max_context_tokens=None, growth_factor=4.0, min_growth_tokens=50_000))
    assert small.turns([6_000] * 5 + [38_000]) == [[]] * 6
    large = Session(ContextBlowup(max_context_tokens=None, growth_factor=4.0, min_growth_tokens=50_000))
    *quiet, (verdict,) = large.turns([12_000] * 5 + [76_000])
    assert quiet == [[]] * 5
    assert verdict.evidence["growth"] == round(76_000 / 12_000, 2)
    with pytest.raises(ValueError, match="min_growth_tokens"):
        ContextBlowup(min_growth_tokens=-1)


def test_turns_without_a_context_size_are_ignored() -> None:
    s = Session(ContextBlowup(growth_factor=2.0, min_turns=2))
    s.turns([0, 0, 0, 5_000, 0, 5_000])
    assert s.state.slots["context_blowup"] == {"a1": [5_000, 5_000]}
    assert s.turn(11_000)


def test_growth_factor_none_turns_the_growth_rule_off() -> None:
    s = Session(ContextBlowup(growth_factor=None, min_turns=1))
    assert s.turns([100, 100, 100, 150_000]) == [[]] * 4
    assert "context_blowup" not in s.state.slots


def test_each_agent_is_measured_against_its_own_turns() -> None:
    # A planner with a large context next to workers with small ones is not a blowup.
    s = Session(ContextBlowup(growth_factor=4.0, min_turns=3))
    for _ in range(5):
        assert s.turn(3_000, "worker-1") == []
        assert s.turn(2_500, "worker-2") == []
        assert s.turn(60_000, "planner") == []
    (verdict,) = s.turn(15_000, "worker-1")
    assert verdict.evidence["agent_id"] == "worker-1"
    assert verdict.evidence["median_context_tokens"] == 3_000


def test_the_median_looks_at_the_last_sixteen_turns() -> None:
    s = Session(ContextBlowup(growth_factor=4.0, min_turns=5))
    s.turns([100] * 20 + [20_000] * 16)
    assert s.state.slots["context_blowup"]["a1"] == [20_000] * 16
    assert s.turn(70_000) == []


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="growth_factor"):
        ContextBlowup(growth_factor=0.5)
    with pytest.raises(ValueError, match="min_turns"):
        ContextBlowup(min_turns=17)


# Properties


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50_000)), max_size=120))
def test_turns_that_stay_within_bounds_never_fire(turns: list[tuple[str, int]]) -> None:
    # Every agent's turns stay between 20,000 and 50,000 tokens (or report none): at most 2.5x any median,
    # always below the hard limit.
    s = Session(ContextBlowup())
    for agent, context in turns:
        assert s.turn(context if context == 0 or context >= 20_000 else 20_000, agent) == []


@given(st.lists(st.integers(1, 100_000), min_size=5, max_size=40), st.integers(1, 2_000_000))
def test_growth_fires_exactly_above_the_factor_times_the_median(history: list[int], jump: int) -> None:
    s = Session(ContextBlowup(max_context_tokens=None, growth_factor=3.0, min_turns=5))
    fired = [s.turn(c) for c in history]
    if any(fired):
        return
    window = sorted(history[-16:])
    mid = len(window) // 2
    median = window[mid] if len(window) % 2 else (window[mid - 1] + window[mid]) / 2
    assert bool(s.turn(jump)) == (jump > 3.0 * median)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_state_stays_small_and_json_after_ten_thousand_out_of_order_events(seed: int) -> None:
    rng = random.Random(seed)
    s = Session(*[d() for d in CONTEXT_DETECTORS])
    agents = [f"agent-{n}" for n in range(30)] + ["a-very-long-agent-name-" + "x" * 90]
    for i in range(10_000):
        t = max(i * 100 + rng.randint(-8_000, 0), 0)
        s.turn(rng.randint(0, 400_000), rng.choice(agents), t=t)
        s.state.fired.clear()
    agents_kept = s.state.slots["context_blowup"]
    assert len(agents_kept) <= 4
    assert all(len(history) <= 16 for history in agents_kept.values())
    assert len(orjson.dumps(s.state.slots)) < 1_000
    assert SessionState.from_bytes(s.state.to_bytes()).slots == s.state.slots


# Context freshness and scope: what the SDK says went into a turn's context


def _assembled(s: Session, *sources: dict[str, Any], agent: str = "a1") -> list[Verdict]:
    event = ContextAssembled(**s.at(agent, None), sources=[ContextSource(**src) for src in sources])
    return s.suite.observe(s.state, event).verdicts


def test_a_source_older_than_the_ttl_of_its_pattern_warns_once() -> None:
    s = Session(ContextFreshness(ttl_ms={"crm.*": 900_000, "kb/*": 86_400_000}))
    now = T0 + 1_000
    fresh = {"name": "crm.accounts", "id": "acct-7", "fetched_at_ms": now - 900_000}
    assert _assembled(s, fresh) == []
    s.t = 0
    stale = {"name": "crm.accounts", "id": "acct-7", "fetched_at_ms": now - 7_200_000}
    (verdict,) = _assembled(s, {"name": "kb/pricing", "fetched_at_ms": now - 3_600_000}, stale)
    assert verdict.detector == "context_freshness"
    assert verdict.failure_class is FailureClass.CONTEXT_BLINDNESS
    assert verdict.advisory
    assert (verdict.observed, verdict.threshold) == (7_200, 900)
    assert verdict.evidence["rule"] == "crm.*"
    assert verdict.evidence["source_id"] == "acct-7"
    assert "crm.accounts/acct-7, fetched 2 h before the turn; its TTL is 15 min (crm.*)" in verdict.reason
    # Given once per session.
    s.t = 0
    assert _assembled(s, stale) == []


def test_a_source_past_its_own_valid_until_is_stale_whatever_the_ttl() -> None:
    s = Session(ContextFreshness())
    (verdict,) = _assembled(
        s,
        {"name": "prices", "valid_until_ms": T0 + 2_000},  # not yet
        {"name": "inventory", "id": "sku-1", "valid_until_ms": T0 - 59_000},
    )
    assert verdict.evidence["rule"] == "valid_until"
    assert "inventory/sku-1, 60 s past the valid_until its source gave it" in verdict.reason


def test_no_ttl_for_a_name_and_no_default_means_only_valid_until_is_checked() -> None:
    s = Session(ContextFreshness(ttl_ms={"crm.*": 60_000}))
    assert _assembled(s, {"name": "web", "fetched_at_ms": 0}) == []
    s2 = Session(ContextFreshness(ttl_ms={"crm.*": 60_000}, default_ttl_ms=3_600_000))
    (verdict,) = _assembled(s2, {"name": "web", "fetched_at_ms": 0})
    assert verdict.evidence["rule"] == "default_ttl_s"


def test_another_tenants_or_users_data_in_the_context_is_a_scope_breach() -> None:
    s = Session(ContextScope(shared_sources=["kb/public/*"]))
    own = {"name": "crm.accounts", "owner_tenant_id": "acme", "owner_user_id": "u-1"}
    shared = {"name": "kb/public/faq", "owner_tenant_id": "vendor"}
    unowned = {"name": "web"}
    assert _assembled(s, own, shared, unowned) == []
    foreign = {"name": "crm.accounts", "id": "acct-9", "owner_tenant_id": "globex"}
    (verdict,) = _assembled(s, own, foreign)
    assert verdict.detector == "context_scope"
    assert verdict.failure_class is FailureClass.MEMORY_CORRUPTION
    assert not verdict.advisory
    assert verdict.evidence["owner_tenant_id"] == "globex"
    assert "crm.accounts/acct-9, which belongs to tenant globex" in verdict.reason


def test_a_user_of_the_same_tenant_is_another_scope() -> None:
    s = Session(ContextScope())
    (verdict,) = _assembled(s, {"name": "mail", "owner_tenant_id": "acme", "owner_user_id": "u-2"})
    assert "which belongs to user u-2 of tenant acme" in verdict.reason
    s2 = Session(ContextScope())
    assert _assembled(s2, {"name": "mail", "owner_user_id": "u-1"}) == []


@given(
    st.lists(
        st.tuples(st.sampled_from(["crm.a", "crm.b", "kb/x", "web"]), st.integers(0, 10_000_000)),
        min_size=1,
        max_size=64,
    )
)
def test_freshness_fires_exactly_when_some_source_is_older_than_its_ttl(
    sources: list[tuple[str, int]],
) -> None:
    ttls = {"crm.*": 600_000, "kb/*": 3_600_000}
    s = Session(ContextFreshness(ttl_ms=ttls))
    at = T0 + 1_000
    fired = _assembled(s, *({"name": n, "fetched_at_ms": at - age} for n, age in sources))
    limit = {"crm.a": 600_000, "crm.b": 600_000, "kb/x": 3_600_000}
    assert bool(fired) == any(name in limit and age > limit[name] for name, age in sources)
