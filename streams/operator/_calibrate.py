"""`tripwire calibrate`: per-agent ceilings proposed from recorded healthy runs, as a config to paste.

A ceiling set by guesswork either kills healthy work or lets a runaway spend for an hour. Recorded healthy
sessions say what normal is: for each agent (the one that starts a session), the 95th percentile of its
sessions' steps, tokens, cost, largest context and duration, and a ceiling a margin above it (steps,
tokens, context and duration at twice p95, cost at four times: spend varies most between runs). The output
is a `detectors.agents` section to paste into the worker's config, and to try first with
`tripwire replay --expect` on the same or other recordings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from agents_contract import ContractError, SessionEnded, SessionStarted, TurnCompleted, parse_event
from detectors import SessionState

# How far above a healthy p95 each ceiling goes.
MARGINS: Final = {"steps": 2.0, "tokens": 2.0, "cost_usd": 4.0, "context_tokens": 2.0, "duration_s": 2.0}


@dataclass
class _Run:
    agent: str
    state: SessionState
    context_tokens: int = 0


@dataclass
class AgentProfile:
    agent_id: str
    sessions: int
    p95: dict[str, float]

    def ceilings(self) -> dict[str, Any]:
        """The proposed overrides for this agent, as a partial `detectors` section."""
        steps = math.ceil(self.p95["steps"] * MARGINS["steps"])
        tokens = _round_up(self.p95["tokens"] * MARGINS["tokens"], 1_000)
        cost = math.ceil(self.p95["cost_usd"] * MARGINS["cost_usd"] * 100) / 100
        context = _round_up(self.p95["context_tokens"] * MARGINS["context_tokens"], 1_000)
        duration = _round_up(self.p95["duration_s"] * MARGINS["duration_s"], 60)
        section: dict[str, Any] = {
            "session_budget": {
                "max_steps": max(steps, 1),
                "max_tokens": max(tokens, 1_000),
                "max_cost_usd": max(cost, 0.01),
            },
            "session_deadline": {"max_duration_s": max(duration, 60)},
        }
        if context:
            section["context_blowup"] = {"max_context_tokens": context}
        return section


@dataclass
class Calibration:
    profiles: list[AgentProfile] = field(default_factory=list)
    lines: int = 0
    rejected: int = 0
    sessions: int = 0


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step) if value > 0 else 0


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (`q` in 0..1) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def calibrate(lines: Iterable[bytes]) -> Calibration:
    """Profiles of the agents whose sessions the recording holds (events in any order)."""
    runs: dict[str, _Run] = {}
    result = Calibration()
    for line in lines:
        if not line.strip():
            continue
        result.lines += 1
        try:
            event = parse_event(line.strip())
        except ContractError:
            result.rejected += 1
            continue
        run = runs.get(event.session_id)
        if run is None:
            run = runs[event.session_id] = _Run(event.agent_id, SessionState(event.session_id))
        if isinstance(event, SessionStarted | SessionEnded) and not run.state.events:
            run.agent = event.agent_id
        if not run.state.accept(event.agent_id, event.seq, event.event_id):
            continue
        run.state.apply(event)
        if isinstance(event, TurnCompleted):
            run.context_tokens = max(run.context_tokens, event.context_tokens)
    result.sessions = len(runs)
    by_agent: dict[str, list[_Run]] = {}
    for run in runs.values():
        by_agent.setdefault(run.agent, []).append(run)
    for agent, agent_runs in sorted(by_agent.items()):
        metrics = {
            "steps": [float(r.state.steps) for r in agent_runs],
            "tokens": [float(r.state.tokens) for r in agent_runs],
            "cost_usd": [r.state.cost_usd for r in agent_runs],
            "context_tokens": [float(r.context_tokens) for r in agent_runs],
            "duration_s": [(r.state.last_event_ms - r.state.first_event_ms) / 1000 for r in agent_runs],
        }
        p95 = {name: percentile(values, 0.95) for name, values in metrics.items()}
        result.profiles.append(AgentProfile(agent, len(agent_runs), p95))
    return result


def render_proposal(calibration: Calibration, *, min_sessions: int = 20) -> str:
    """The proposal as a YAML `detectors.agents` section (JSON values, which YAML reads), with the
    evidence for each agent as comments."""
    out = [
        f"# {calibration.sessions} sessions in {calibration.lines} events "
        f"({calibration.rejected} lines not valid events, left out).",
        "# Ceilings: steps, tokens, context and duration at 2x the healthy p95, cost at 4x.",
        "detectors:",
        "  agents:",
    ]
    proposed = 0
    for profile in calibration.profiles:
        p = profile.p95
        evidence = (
            f"{profile.sessions} sessions; p95: {p['steps']:g} steps, {p['tokens']:g} tokens, "
            f"${p['cost_usd']:.4g}, context {p['context_tokens']:g} tokens, {p['duration_s']:g} s"
        )
        if profile.sessions < min_sessions:
            out.append(f"    # {profile.agent_id}: {evidence}; too few to propose (at least {min_sessions})")
            continue
        proposed += 1
        out.append(f"    # {evidence}")
        out.append(f"    {orjson.dumps(profile.agent_id).decode()}:")
        for section, values in profile.ceilings().items():
            out.append(f"      {section}: {orjson.dumps(values).decode()}")
    if not proposed:
        out.append("    {}")
    return "\n".join(out)
