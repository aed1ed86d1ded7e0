"""`tripwire inventory`: which failure categories this configuration would catch, and which it would not.

The pre-launch checklist, generated from the running config rather than written by hand: for every failure
category the project knows, the detectors that cover it here, each in the words an on-call engineer reads
("we would know from X exceeding Y within Z"), with its mode, and the categories nothing covers. A
category counts as covered only when some detector would tell someone (warn or enforce); one watched in
shadow mode alone is counted and never paged, which is a gap before launch. Tenant and agent overrides
that switch a covering detector off or change its mode are listed under the category they weaken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from detectors import DetectorSettings


@dataclass(frozen=True, slots=True)
class Category:
    key: str
    title: str
    # Detector sections (of `detectors`) whose verdicts would reveal it.
    sections: tuple[str, ...]
    # What it takes to cover it, when nothing in this version does.
    needs: str = ""


CATEGORIES: Final = (
    Category(
        "runaway_loops",
        "runaway loops",
        (
            "repeated_tool_call",
            "similar_calls",
            "no_new_information",
            "cyclic_pattern",
            "agent_ping_pong",
            "no_progress",
            "monologue",
            "repeated_error",
            "session_budget",
            "session_deadline",
        ),
    ),
    Category(
        "cost_spikes",
        "cost spikes",
        ("session_budget", "burn_rate", "agent_budget", "tenant_daily_budget"),
    ),
    Category("tool_flapping", "tool flapping", ("tool_circuit", "repeated_error")),
    Category("context_blowup", "context blow-up", ("context_blowup",)),
    Category("memory_write_amplification", "memory write amplification", ("memory_write_amplification",)),
    Category(
        "multi_agent_deadlock",
        "multi-agent deadlock",
        ("deadlock", "stall", "correlated_quiet", "agent_ping_pong"),
    ),
    Category("cascading_errors", "cascading errors", ("error_burst", "error_propagation")),
    Category("memory_leakage", "memory leakage", ("memory_leak", "memory_namespace_leak", "context_scope")),
    Category(
        "rogue_actions",
        "rogue actions",
        (),
        "a tool policy enforced at the call and approvals for irreversible tools, which this version "
        "does not have",
    ),
    Category(
        "context_blindness",
        "context blindness",
        ("context_freshness", "context_scope"),
        "the SDK's reports of each turn's context sources (`context_used`) and a freshness or scope rule",
    ),
    Category(
        "silent_degradation",
        "silent degradation",
        (),
        "evaluation scores against a baseline, which this version does not read",
    ),
    Category(
        "contract_violations",
        "contract violations",
        (),
        "tool results checked against a declared schema, which this version does not do (malformed "
        "events are refused to the dead-letter topic, but a tool's result is not checked)",
    ),
)


def _span(seconds: float) -> str:
    if seconds >= 86_400 and seconds % 86_400 == 0:
        days = int(seconds // 86_400)
        return "a day" if days == 1 else f"{days} days"
    if seconds >= 3_600 and seconds % 3_600 == 0:
        hours = int(seconds // 3_600)
        return "an hour" if hours == 1 else f"{hours} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def _times(n: int) -> str:
    return "twice" if n == 2 else f"{n} times"


def _budget(s: Any, category: str) -> str | None:
    if category == "runaway_loops":
        if s.max_steps is None:
            return None
        return f"a session taking more than {s.max_steps} steps (turns and tool calls)"
    parts = []
    if s.max_cost_usd is not None:
        parts.append(f"more than {_usd(s.max_cost_usd)}")
    if s.max_tokens is not None:
        parts.append(f"more than {s.max_tokens:,} tokens")
    return f"a session spending {' or '.join(parts)}" if parts else None


def _repeated_tool_call(s: Any, d: DetectorSettings) -> str:
    out = f"one tool called with the same arguments {s.count} times within {_span(s.window_s)}"
    if s.same_result_count is not None:
        out += f", or the same call giving the same result {_times(s.same_result_count)}"
    return out


def _repeated_error(s: Any, d: DetectorSettings) -> str:
    out = f"the same error {s.count} times in a row"
    if s.same_call_count is not None:
        out += (
            f", or the same call failing the same way {_times(s.same_call_count)} (errors that retrying "
            "does not cure)"
        )
    return out


def _burn_rate(s: Any, d: DetectorSettings) -> str | None:
    ceiling = s.ceiling_usd if s.ceiling_usd is not None else d.session_budget.max_cost_usd
    if ceiling is None:
        return None
    return (
        f"a session's spend rate (over {_span(s.window_s)}) heading past {_usd(ceiling)} within "
        f"{_span(s.horizon_s)} (once it has spent {_usd(s.min_spend_usd)})"
    )


def _context_blowup(s: Any, d: DetectorSettings) -> str | None:
    parts = []
    if s.max_context_tokens is not None:
        parts.append(f"a turn's context passing {s.max_context_tokens:,} tokens")
    if s.growth_factor is not None:
        parts.append(
            f"a context growing {s.growth_factor:g}x over {s.min_turns} turns (turns of at least "
            f"{s.min_growth_tokens:,} tokens)"
        )
    return ", or ".join(parts) or None


def _stall(s: Any, d: DetectorSettings) -> str:
    return (
        f"a session silent for {_span(s.quiet_s)} while not ended, or one guarded call running longer "
        f"than {_span(s.max_call_s)}"
    )


def _error_burst(s: Any, d: DetectorSettings) -> str:
    out = f"{s.count} tool errors within {_span(s.window_s)}"
    if s.ratio is not None:
        out += f", or {s.ratio:.0%} of at least {s.min_calls} calls failing"
    return out


def _freshness(s: Any, d: DetectorSettings) -> str:
    ttls = [f"{pattern} older than {_span(ttl)}" for pattern, ttl in s.ttl_s.items()]
    if s.default_ttl_s is not None:
        ttls.append(f"any other older than {_span(s.default_ttl_s)}")
    rule = "; ".join(ttls) if ttls else "no TTL configured, so only sources' own valid_until"
    return (
        f"a turn's context using a source past its freshness ({rule}), when agents report their "
        "context sources"
    )


def _tool_circuit(s: Any, d: DetectorSettings) -> str:
    scope = "for everyone (fleet)" if s.scope == "fleet" else "for that tenant"
    return (
        f"a tool failing in {s.error_ratio:.0%} of at least {s.min_calls} calls within {_span(s.window_s)}: "
        f"its circuit opens {scope} for {_span(s.open_s)}, then one probe call is let through"
    )


_SAYS: Final[dict[str, Callable[[Any, DetectorSettings], str | None]]] = {
    "repeated_tool_call": _repeated_tool_call,
    "similar_calls": lambda s, d: (
        f"{s.count} calls of one tool, or {s.count} requests from one agent to another, at least "
        f"{s.similarity:.0%} alike within {_span(s.window_s)}"
    ),
    "no_new_information": lambda s, d: (
        f"the last {s.calls} tool results within {_span(s.window_s)} bringing less than "
        f"{s.min_new_share:.0%} unseen content"
    ),
    "cyclic_pattern": lambda s, d: (
        f"a cycle of up to {s.max_period} steps repeated {s.repeats} times in a row"
    ),
    "agent_ping_pong": lambda s, d: (
        f"two agents sending each other, in turn, what was already said {s.exchanges} times"
    ),
    "no_progress": lambda s, d: (
        f"the same model output {s.repeats} times in a row (outputs of at least {s.min_output_tokens} tokens)"
    ),
    "monologue": lambda s, d: (
        f"an agent taking {s.turns} turns in a row without acting, and with nobody speaking to it"
    ),
    "repeated_error": _repeated_error,
    "session_deadline": lambda s, d: f"a session running longer than {_span(s.max_duration_s)}",
    "burn_rate": _burn_rate,
    "agent_budget": lambda s, d: (
        f"one agent's sessions together spending more than {_usd(s.max_cost_usd)} within {_span(s.window_s)}"
    ),
    "tenant_daily_budget": lambda s, d: (
        f"a tenant's sessions together spending more than {_usd(s.max_cost_usd)} in a day"
    ),
    "tool_circuit": _tool_circuit,
    "context_blowup": _context_blowup,
    "memory_write_amplification": lambda s, d: (
        f"a session making more than {s.writes} memory writes within {_span(s.window_s)}"
    ),
    "deadlock": lambda s, d: (
        "an agent reporting that it waits on another that waits, through others or at once, on it"
    ),
    "stall": _stall,
    "correlated_quiet": lambda s, d: (
        f"{s.min_sessions} sessions of one tenant (and model) going silent within {_span(s.window_s)} of "
        "each other: one incident (a provider hang), paged once"
    ),
    "context_freshness": _freshness,
    "context_scope": lambda s, d: (
        "a turn's context holding data its source says belongs to another tenant or user"
        + (f" (shared sources left alone: {', '.join(s.shared_sources)})" if s.shared_sources else "")
        + ", when agents report their context sources"
    ),
    "error_burst": _error_burst,
    "error_propagation": lambda s, d: (
        f"tool errors from {s.agents} agents of one session within {_span(s.window_s)} of the first"
    ),
    "memory_leak": lambda s, d: (
        "content one user or tenant wrote to memory read by another user's or tenant's session (owners "
        f"remembered for {_span(s.owner_ttl_s)})"
    ),
    "memory_namespace_leak": lambda s, d: (
        "a memory key read or overwritten by a user or tenant other than the one that first wrote it"
        + (f" (shared stores left alone: {', '.join(s.shared_stores)})" if s.shared_stores else "")
    ),
}

_MODE_WORDS: Final = {
    "enforce": "kills the session and pages",
    "warn": "pages, never kills",
    "shadow": "counted only, nobody is told",
}
# Detectors whose enforce mode does something other than kill the session.
_ENFORCE_WORDS: Final = {
    "tool_circuit": "refuses the tool while open and pages",
    "correlated_quiet": "pages once and holds the silent sessions' stall kills",
}


def _does(cover: Cover) -> str:
    if cover.mode == "enforce":
        return _ENFORCE_WORDS.get(cover.detector, _MODE_WORDS["enforce"])
    return _MODE_WORDS[cover.mode]


@dataclass(frozen=True, slots=True)
class Cover:
    detector: str
    mode: str
    says: str


@dataclass(frozen=True, slots=True)
class Entry:
    category: Category
    covers: tuple[Cover, ...]
    # Overrides that switch a covering detector off or change its mode: "tenant acme: burn_rate off".
    weakened: tuple[str, ...]

    @property
    def status(self) -> str:
        modes = {c.mode for c in self.covers}
        if "enforce" in modes:
            return "covered"
        if "warn" in modes:
            return "pages only"
        if "shadow" in modes:
            return "shadow only"
        return "not covered"


def _covers(category: Category, d: DetectorSettings) -> list[Cover]:
    out = []
    for name in category.sections:
        section = getattr(d, name)
        if not section.enabled:
            continue
        says = _budget(section, category.key) if name == "session_budget" else _SAYS[name](section, d)
        if says is not None:
            out.append(Cover(name, section.mode, says))
    return out


def inventory(settings: DetectorSettings) -> list[Entry]:
    entries = []
    for category in CATEGORIES:
        covers = _covers(category, settings)
        base = {c.detector: c.mode for c in covers}
        weakened = []
        for scope, table in (("tenant", settings.tenants), ("agent", settings.agents)):
            for name, override in sorted(table.items()):
                there = {c.detector: c.mode for c in _covers(category, settings.merged(override))}
                for detector, mode in base.items():
                    if detector not in there:
                        weakened.append(f"{scope} {name}: {detector} off")
                    elif there[detector] != mode:
                        weakened.append(f"{scope} {name}: {detector} in {there[detector]} mode")
        entries.append(Entry(category, tuple(covers), tuple(weakened)))
    return entries


def render(entries: list[Entry], *, source: str) -> str:
    lines = [f"Failure-mode inventory of {source}", ""]
    for entry in entries:
        category = entry.category
        lines.append(f"{category.title}: {entry.status.upper()}")
        for cover in entry.covers:
            lines.append(f"  [{cover.mode}] {cover.detector}: we would know from {cover.says}")
            lines.append(f"      ({_does(cover)})")
        if not entry.covers:
            lines.append(f"  nothing here would notice it; covering it takes {category.needs}")
        for weak in entry.weakened:
            lines.append(f"  weaker for {weak}")
        lines.append("")
    lines.extend(_gaps(entries))
    return "\n".join(lines)


def render_markdown(entries: list[Entry], *, source: str) -> str:
    lines = [f"# Failure-mode inventory of {source}", ""]
    lines.append("| Failure category | Status | Detectors (mode) |")
    lines.append("|---|---|---|")
    for entry in entries:
        detectors = ", ".join(f"`{c.detector}` ({c.mode})" for c in entry.covers) or "none"
        lines.append(f"| {entry.category.title} | {entry.status} | {detectors} |")
    lines.append("")
    for entry in entries:
        category = entry.category
        lines.append(f"## {category.title[0].upper()}{category.title[1:]}: {entry.status}")
        lines.append("")
        for cover in entry.covers:
            lines.append(
                f"- **{cover.detector}** ({cover.mode}: {_does(cover)}): we would know from {cover.says}."
            )
        if not entry.covers:
            lines.append(f"- Nothing here would notice it; covering it takes {category.needs}.")
        for weak in entry.weakened:
            lines.append(f"- Weaker for {weak}.")
        lines.append("")
    lines.extend(_gaps(entries))
    return "\n".join(lines).rstrip() + "\n"


def _gaps(entries: list[Entry]) -> list[str]:
    uncovered = [e.category.title for e in entries if e.status in ("not covered", "shadow only")]
    paged = [e.category.title for e in entries if e.status == "pages only"]
    out = []
    if uncovered:
        out.append("Not covered (nobody would be told): " + ", ".join(uncovered))
    if paged:
        out.append("Paged but never stopped: " + ", ".join(paged))
    if not out:
        out.append("Every category is covered.")
    return out
