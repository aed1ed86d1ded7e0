"""Context blowup: an agent's prompt growing past a hard size, or suddenly far past its own usual size.

`ContextBlowup` reads `context_tokens` from each completed turn. A turn above `max_context_tokens` fires at
once; a turn above `growth_factor` times the median of the same agent's recent turns fires once the agent
has `min_turns` turns behind it and the turn is at least `min_growth_tokens` (a 6k context that reads a
file to 38k is a sixfold jump and no danger to any model), which catches a tool result or a loop stuffing
the context long before the hard limit. The median is per agent because the agents of one session keep
separate contexts: a planner's large prompt is not a blowup of its workers' small ones.

Context blindness is judged on the `context.assembled` events the SDK sends before a turn (the sources of
its context: name, item id, when fetched or valid until, whose; never content). `ContextFreshness` warns of
a source past its TTL, `ContextScope` kills on a source owned by another tenant or user.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from agents_contract import AgentEvent, ContextAssembled, ContextSource, TurnCompleted
from detectors._errors import compact_id
from detectors._stalls import duration
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


def _matcher(patterns: Iterable[str]) -> Callable[[str], str | None]:
    """The first of these glob patterns (`*`, `?`, `[...]`, whole name) that a source name matches."""
    compiled = [(pattern, re.compile(fnmatch.translate(pattern))) for pattern in patterns]

    def first(name: str) -> str | None:
        for pattern, regex in compiled:
            if regex.match(name):
                return pattern
        return None

    return first


class ContextFreshness:
    """A turn's context assembled from a source past its freshness: older than the TTL configured for its
    name (from when it was fetched), or past the `valid_until_ms` its source gave it. Advisory by default:
    stale data is worth a look before it is worth a kill."""

    kinds = frozenset({"context.assembled"})

    def __init__(
        self,
        *,
        name: str = "context_freshness",
        ttl_ms: Mapping[str, int] | None = None,
        default_ttl_ms: int | None = None,
    ) -> None:
        ttls = dict(ttl_ms or {})
        for pattern, ttl in ttls.items():
            if not pattern or ttl <= 0:
                raise ValueError(f"a TTL needs a pattern and a positive time, got {pattern!r}: {ttl!r}")
        if default_ttl_ms is not None and default_ttl_ms <= 0:
            raise ValueError(f"default_ttl_ms must be positive, got {default_ttl_ms!r}")
        self.name = name
        self.ttl_ms = ttls
        self.default_ttl_ms = default_ttl_ms
        self._pattern = _matcher(ttls)

    def ttl_for(self, source: str) -> tuple[int | None, str]:
        """The TTL of a source name (None: none applies) and the pattern that set it ("" for the default)."""
        pattern = self._pattern(source)
        if pattern is not None:
            return self.ttl_ms[pattern], pattern
        return self.default_ttl_ms, ""

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, ContextAssembled):
            return None
        at = event.event_time_ms
        stale: list[tuple[ContextSource, int, int, str]] = []  # (source, age, limit, rule)
        for source in event.sources:
            if source.valid_until_ms is not None and at > source.valid_until_ms:
                stale.append((source, at - source.valid_until_ms, 0, "valid_until"))
                continue
            ttl, pattern = self.ttl_for(source.name)
            if ttl is not None and source.fetched_at_ms is not None and at - source.fetched_at_ms > ttl:
                stale.append((source, at - source.fetched_at_ms, ttl, pattern or "default_ttl_s"))
        if not stale:
            return None
        source, age, limit, rule = stale[0]
        if rule == "valid_until":
            why = f"{duration(age)} past the valid_until its source gave it"
        else:
            why = f"fetched {duration(age)} before the turn; its TTL is {duration(limit)} ({rule})"
        more = f" (and {len(stale) - 1} more stale sources)" if len(stale) > 1 else ""
        return verdict(
            self.name,
            FailureClass.CONTEXT_BLINDNESS,
            state,
            event,
            reason=f"agent {event.agent_id} assembled context from {_named(source)}, {why}{more}",
            observed=age / 1000,
            threshold=limit / 1000,
            advisory=True,
            source=source.name,
            source_id=source.id,
            rule=rule,
            age_ms=age,
            ttl_ms=limit or None,
            fetched_at_ms=source.fetched_at_ms,
            valid_until_ms=source.valid_until_ms,
            stale_sources=len(stale),
            sources=len(event.sources),
        )


class ContextScope:
    """A turn's context holding data its source says belongs to another tenant, or to another user of the
    session's tenant: a scope breach, whatever the model does with it. Sources matching `shared_sources`
    (a public knowledge base, a tenant-wide wiki) are meant to be read by anyone and are left alone."""

    kinds = frozenset({"context.assembled"})

    def __init__(self, *, name: str = "context_scope", shared_sources: Iterable[str] = ()) -> None:
        self.name = name
        self.shared_sources = tuple(shared_sources)
        self._shared = _matcher(self.shared_sources)

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, ContextAssembled):
            return None
        foreign: list[tuple[ContextSource, str]] = []
        for source in event.sources:
            tenant, user = source.owner_tenant_id, source.owner_user_id
            if tenant is None and user is None:
                continue
            if tenant is not None and tenant != event.tenant_id:
                whose = f"tenant {tenant}"
            elif user is not None and user != event.user_id:
                whose = f"user {user}" + (f" of tenant {tenant}" if tenant else "")
            else:
                continue
            if self._shared(source.name) is None:
                foreign.append((source, whose))
        if not foreign:
            return None
        source, whose = foreign[0]
        more = f" (and {len(foreign) - 1} more foreign sources)" if len(foreign) > 1 else ""
        return verdict(
            self.name,
            FailureClass.MEMORY_CORRUPTION,
            state,
            event,
            reason=(
                f"agent {event.agent_id} of tenant {event.tenant_id}, user {event.user_id} assembled context "
                f"from {_named(source)}, which belongs to {whose}{more}"
            ),
            observed=len(foreign),
            threshold=0,
            source=source.name,
            source_id=source.id,
            owner_tenant_id=source.owner_tenant_id,
            owner_user_id=source.owner_user_id,
            foreign_sources=len(foreign),
            sources=len(event.sources),
        )


def _named(source: ContextSource) -> str:
    return f"{source.name}/{source.id}" if source.id else source.name


CONTEXT_DETECTORS: Final[tuple[type[Detector], ...]] = (ContextBlowup, ContextFreshness, ContextScope)
