"""Context blowup: an agent's prompt growing past a hard size, or suddenly far past its own usual size.

`ContextBlowup` reads `context_tokens` from each completed turn. A turn above `max_context_tokens` fires at
once; a turn above `growth_factor` times the median of the same agent's recent turns fires once the agent
has `min_turns` turns behind it and the turn is at least `min_growth_tokens` (a 6k context that reads a
file to 38k is a sixfold jump and no danger to any model), which catches a tool result or a loop stuffing
the context long before the hard limit. The median is per agent because the agents of one session keep
separate contexts: a planner's large prompt is not a blowup of its workers' small ones.
"""

from __future__ import annotations

from typing import Final

from agents_contract import AgentEvent, TurnCompleted
from detectors._errors import compact_id
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import slot

_HISTORY: Final = 16
# Agents whose turn sizes are kept per session; a further agent replaces the one heard from longest ago.
_AGENTS: Final = 4


def _median(values: list[int]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


class ContextBlowup:
    """A turn's context above `max_context_tokens`, or above `growth_factor` x the agent's recent median."""

    kinds = frozenset({"turn.completed"})

    def __init__(
        self,
        *,
        name: str = "context_blowup",
        max_context_tokens: int | None = 200_000,
        growth_factor: float | None = 4.0,
        min_turns: int = 5,
        min_growth_tokens: int = 0,
    ) -> None:
        if max_context_tokens is not None and max_context_tokens <= 0:
            raise ValueError(f"max_context_tokens must be positive or None, got {max_context_tokens!r}")
        if growth_factor is not None and growth_factor <= 1:
            raise ValueError(f"growth_factor must be above 1 or None, got {growth_factor!r}")
        if not 1 <= min_turns <= _HISTORY:
            raise ValueError(f"min_turns must be 1-{_HISTORY}, got {min_turns!r}")
        self.name = name
        self.max_context_tokens = max_context_tokens
        self.growth_factor = growth_factor
        self.min_turns = min_turns
        if min_growth_tokens < 0:
            raise ValueError(f"min_growth_tokens must be 0 or more, got {min_growth_tokens!r}")
        self.min_growth_tokens = min_growth_tokens

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        # A turn that does not report its context size (0) says nothing about growth.
        if not isinstance(event, TurnCompleted) or not event.context_tokens:
            return None
        tokens = event.context_tokens
        found: Verdict | None = None
        if self.max_context_tokens is not None and tokens > self.max_context_tokens:
            found = verdict(
                self.name,
                FailureClass.CONTEXT_BLOWUP,
                state,
                event,
                reason=(
                    f"a turn's context reached {tokens:,} tokens; the limit is {self.max_context_tokens:,}"
                ),
                observed=tokens,
                threshold=self.max_context_tokens,
                context_tokens=tokens,
                max_context_tokens=self.max_context_tokens,
                model=event.model,
            )
        if self.growth_factor is None:
            return found
        agents: dict[str, list[int]] = slot(state, self.name, {})
        agent = compact_id(event.agent_id)
        # Re-inserted on every turn, so the dict's order is the order the agents were last heard from.
        history = agents.pop(agent, None) or []
        agents[agent] = history
        if len(agents) > _AGENTS:
            del agents[next(iter(agents))]
        if found is None and len(history) >= self.min_turns and tokens >= self.min_growth_tokens:
            median = _median(history)
            limit = self.growth_factor * median
            if tokens > limit:
                found = verdict(
                    self.name,
                    FailureClass.CONTEXT_BLOWUP,
                    state,
                    event,
                    reason=(
                        f"a turn's context jumped to {tokens:,} tokens, {tokens / median:.1f}x the median "
                        f"{median:,.0f} of the agent's last {len(history)} turns; the limit is "
                        f"{self.growth_factor:g}x"
                    ),
                    observed=tokens,
                    threshold=round(limit, 1),
                    context_tokens=tokens,
                    median_context_tokens=median,
                    growth=round(tokens / median, 2),
                    growth_factor=self.growth_factor,
                    turns=len(history),
                    model=event.model,
                )
        history.append(tokens)
        if len(history) > _HISTORY:
            del history[0]
        return found


CONTEXT_DETECTORS: Final[tuple[type[Detector], ...]] = (ContextBlowup,)
