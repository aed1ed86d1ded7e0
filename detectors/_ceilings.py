"""Hard per-session ceilings: steps, tokens and spend. The first detectors, and the cheapest.

Each ceiling reads the running totals that `SessionState.apply` keeps and fires on the event that takes the
total past its limit (a limit of N allows N). They fire at most once per session: the suite stops judging a
session once it is killed.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents_contract import AgentEvent
from detectors._state import SessionState
from detectors._suite import verdict
from detectors._verdict import FailureClass, Verdict


@dataclass(frozen=True, slots=True)
class CeilingLimits:
    """The per-session limits; None turns that ceiling off."""

    max_steps: int | None = 50
    max_tokens: int | None = 500_000
    max_cost_usd: float | None = 10.0


class _Ceiling:
    name = ""
    unit = ""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def _total(self, state: SessionState) -> float:
        raise NotImplementedError

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        total = self._total(state)
        if total <= self.limit:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=f"session used {total:g} {self.unit}; the ceiling is {self.limit:g}",
            observed=total,
            threshold=self.limit,
            steps=state.steps,
            tokens=state.tokens,
            cost_usd=round(state.cost_usd, 6),
            events=state.events,
        )


class StepCeiling(_Ceiling):
    kinds = frozenset({"turn.started", "tool.called"})
    name, unit = "max_steps", "steps"

    def _total(self, state: SessionState) -> float:
        return state.steps


class TokenCeiling(_Ceiling):
    kinds = frozenset({"turn.completed"})
    name, unit = "max_tokens", "tokens"

    def _total(self, state: SessionState) -> float:
        return state.tokens


class CostCeiling(_Ceiling):
    kinds = frozenset({"turn.completed"})
    name, unit = "max_cost_usd", "USD"

    def _total(self, state: SessionState) -> float:
        return state.cost_usd


def ceilings(limits: CeilingLimits) -> list[_Ceiling]:
    built: list[_Ceiling] = []
    if limits.max_steps is not None:
        built.append(StepCeiling(limits.max_steps))
    if limits.max_tokens is not None:
        built.append(TokenCeiling(limits.max_tokens))
    if limits.max_cost_usd is not None:
        built.append(CostCeiling(limits.max_cost_usd))
    return built
