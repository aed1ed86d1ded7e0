"""The hard budgets the SDK's pre-call gate enforces, as the worker publishes them to Redis.

One layer for the defaults, one per tenant override and one per agent override, laid over each other by the
gate's script in the worker's order (defaults, then the tenant's, then the agent's). A layer names only the
budgets its override touches; a budget that is off, or not in `enforce` mode, is published as "none", so the
gate never refuses what the worker itself would only warn about.
"""

from __future__ import annotations

from typing import Any

from detectors import DetectorSettings


def _fields(d: DetectorSettings, sections: set[str] | None) -> dict[str, str]:
    def value(section: Any, limit: float | None) -> str:
        return "none" if limit is None or not section.enabled or section.mode != "enforce" else repr(limit)

    out: dict[str, str] = {}
    if sections is None or "session_budget" in sections:
        b = d.session_budget
        out["session_budget.max_cost_usd"] = value(b, b.max_cost_usd)
        out["session_budget.max_steps"] = value(b, b.max_steps)
        out["session_budget.max_tokens"] = value(b, b.max_tokens)
    if sections is None or "agent_budget" in sections:
        a = d.agent_budget
        out["agent_budget.max_cost_usd"] = value(a, a.max_cost_usd)
        out["agent_budget.window_s"] = repr(a.window_s)
    if sections is None or "tenant_daily_budget" in sections:
        t = d.tenant_daily_budget
        out["tenant_daily_budget.max_cost_usd"] = value(t, t.max_cost_usd)
    return out


def gate_layers(d: DetectorSettings) -> dict[str, dict[str, str]]:
    """{"default": ..., "tenant:T": ..., "agent:A": ...}: what `publish_limits` writes."""
    layers = {"default": _fields(d, None)}
    for scope, table in (("tenant", d.tenants), ("agent", d.agents)):
        for name, override in table.items():
            fields = _fields(d.merged(override), set(override))
            if fields:
                layers[f"{scope}:{name}"] = fields
    return layers
