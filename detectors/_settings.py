"""Detector definitions as configuration: which detectors run, with which windows, thresholds and modes.

Like quix-streams' window definitions, these settings are apart from the code that runs them: `build_policy`
turns them into armed detectors for each (tenant, agent), so the worker, `tripwire replay` and the tests
build the same suite from the same file. Overrides per tenant and per agent are partial copies of the
`detectors` section, merged over it (agent over tenant over defaults) and validated at start, so a typo in
an override fails the process naming the key, like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detectors._ceilings import CostCeiling, StepCeiling, TokenCeiling
from detectors._context import ContextBlowup, ContextFreshness, ContextScope
from detectors._errors import ErrorBurst, ErrorPropagation
from detectors._keyed import (
    AgentRollingBudget,
    ContentOwnership,
    CorrelatedQuiet,
    KeyedDetector,
    KeyedPolicy,
    KeyedSet,
    MemoryNamespace,
    TenantDailyBudget,
    ToolCircuit,
)
from detectors._loops import (
    AgentPingPong,
    CyclicPattern,
    Monologue,
    NoProgress,
    RepeatedError,
    RepeatedToolCall,
)
from detectors._pace import BurnRate, MemoryWriteAmplification, SessionDeadline
from detectors._progress import NoNewInformation, SimilarCalls
from detectors._stalls import Deadlock, Stall
from detectors._suite import Armed, Clock, Detector, DetectorSet, DetectorSuite, Policy
from detectors._verdict import Mode

_Positive = Annotated[int, Field(ge=1)]
_Seconds = Annotated[float, Field(gt=0, le=31 * 86_400, allow_inf_nan=False)]
_Usd = Annotated[float, Field(gt=0, le=10**9, allow_inf_nan=False)]
_Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class KeyProblems(ValueError):
    """Problems found below the key being validated, each `path.below: what is wrong`, so the error an
    operator sees names the full key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_LEGACY_BUDGET = frozenset({"max_steps", "max_tokens", "max_cost_usd"})


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # shadow: metrics and log only; warn: alert, no kill; enforce: kill and alert.
    mode: Mode = "enforce"
    enabled: bool = True


class SessionBudget(_Section):
    """Hard ceilings per session; null switches one off."""

    max_steps: _Positive | None = 50
    # Every turn re-sends its context: a coding run re-sending 20k tokens 25 times has used 500k without
    # repeating itself. Cost is the ceiling that matters; this one stops a runaway that costs nothing.
    max_tokens: _Positive | None = 2_000_000
    max_cost_usd: _Usd | None = 10.0


class RepeatedToolCallSettings(_Section):
    count: Annotated[int, Field(ge=2)] = 5
    window_s: _Seconds = 300.0
    # The same call giving the same result this often within the window, other calls in between (null: off).
    # An agent that polls a status on purpose needs a higher value.
    same_result_count: Annotated[int, Field(ge=2)] | None = 3


class SimilarCallsSettings(_Section):
    # Calls of one tool (or requests from one agent to another) with alike arguments within the window.
    count: Annotated[int, Field(ge=2)] = 4
    window_s: _Seconds = 600.0
    # How alike (estimated Jaccard similarity of words and character trigrams) counts as the same intent.
    similarity: _Ratio = 0.3


class NoNewInformationSettings(_Section):
    # Tool results within the window that together must bring at least `min_new_share` new content.
    calls: Annotated[int, Field(ge=2)] = 8
    window_s: _Seconds = 600.0
    min_new_share: _Ratio = 0.1


class CyclicPatternSettings(_Section):
    max_period: Annotated[int, Field(ge=2, le=8)] = 4
    repeats: Annotated[int, Field(ge=2, le=16)] = 3


class AgentPingPongSettings(_Section):
    exchanges: Annotated[int, Field(ge=2)] = 6


class NoProgressSettings(_Section):
    repeats: Annotated[int, Field(ge=2)] = 3
    # Shorter outputs are not judged: a router's or selector's output is the next speaker's name.
    min_output_tokens: Annotated[int, Field(ge=0)] = 10


class MonologueSettings(_Section):
    turns: Annotated[int, Field(ge=2)] = 8


class RepeatedErrorSettings(_Section):
    count: Annotated[int, Field(ge=2)] = 3
    # The same call failing with the same error this often, other calls in between, unless the error is one
    # retrying cures (timeouts, rate limits, unavailable services); null: off.
    same_call_count: Annotated[int, Field(ge=2)] | None = 2


class BurnRateSettings(_Section):
    # Warns (never kills) when the session's spend rate would cross the session budget's max_cost_usd
    # (or `ceiling_usd`, when set) within `horizon_s`.
    mode: Mode = "warn"
    ceiling_usd: _Usd | None = None
    window_s: _Seconds = 60.0
    horizon_s: _Seconds = 300.0
    # A projection from pennies is noise: the window must hold at least this much spend first.
    min_spend_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.5


class SessionDeadlineSettings(_Section):
    max_duration_s: _Seconds = 3600.0


class StallSettings(_Section):
    quiet_s: _Seconds = 300.0
    # One guarded call running this long (the SDK's heartbeats say since when) is a stall too. An hour, the
    # session deadline's default: a provider that answers 40 minutes late is slow, not stuck.
    max_call_s: _Seconds = 3600.0


class CorrelatedQuietSettings(_Section):
    # This many sessions of one tenant (and model, where known) going quiet within `window_s` of each other
    # are one incident (a provider hang), paged once. In enforce mode each one's stall kill waits up to
    # `window_s` (never more than stall.quiet_s) for the others, and is then held until `hold_s` after the
    # session went quiet; warn pages the incident and holds nothing.
    min_sessions: Annotated[int, Field(ge=2)] = 5
    window_s: _Seconds = 120.0
    hold_s: _Seconds = 3600.0


class DeadlockSettings(_Section):
    pass


class ErrorBurstSettings(_Section):
    count: Annotated[int, Field(ge=2)] = 10
    window_s: _Seconds = 60.0
    ratio: _Ratio | None = 0.5
    min_calls: Annotated[int, Field(ge=2)] = 10


class ErrorPropagationSettings(_Section):
    agents: Annotated[int, Field(ge=2)] = 3
    window_s: _Seconds = 60.0


class ContextBlowupSettings(_Section):
    max_context_tokens: _Positive | None = 200_000
    growth_factor: Annotated[float, Field(gt=1, le=1000, allow_inf_nan=False)] | None = 4.0
    min_turns: Annotated[int, Field(ge=1)] = 5
    # The growth rule judges only turns at least this large: a small context growing several times over
    # (a file read into a 6k prompt) endangers no model.
    min_growth_tokens: Annotated[int, Field(ge=0)] = 50_000


_Pattern = Annotated[str, Field(min_length=1, max_length=256)]


class ContextFreshnessSettings(_Section):
    # Warns (by default) when a turn's context used a source past its freshness: older than the TTL of the
    # first pattern (glob: `*`, `?`, `[...]`) its name matches, in the order given, or than `default_ttl_s`
    # when none does (null: only the source's own valid_until is checked).
    mode: Mode = "warn"
    ttl_s: dict[_Pattern, _Seconds] = Field(default_factory=dict)
    default_ttl_s: _Seconds | None = None


class ContextScopeSettings(_Section):
    # Kills (by default) when a turn's context used data its source says another tenant or user owns.
    # Sources matching these globs are shared on purpose (a public knowledge base) and left alone.
    shared_sources: list[_Pattern] = Field(default_factory=list)


class MemoryWriteAmplificationSettings(_Section):
    mode: Mode = "warn"
    writes: Annotated[int, Field(ge=2)] = 50
    window_s: _Seconds = 60.0


class TenantDailyBudgetSettings(_Section):
    max_cost_usd: _Usd = 500.0


class AgentBudgetSettings(_Section):
    max_cost_usd: _Usd = 50.0
    window_s: _Seconds = 3600.0


class ToolCircuitSettings(_Section):
    # `tenant`: one circuit per tenant and tool, opened by that tenant's errors and refusing the tool to that
    # tenant's agents only; `fleet`: one circuit per tool for everyone (one tenant's errors switch the tool
    # off for all). Read from the top-level section only.
    scope: Literal["tenant", "fleet"] = "tenant"
    window_s: _Seconds = 60.0
    min_calls: Annotated[int, Field(ge=1)] = 20
    error_ratio: _Ratio = 0.5
    open_s: _Seconds = 30.0


class MemoryLeakSettings(_Section):
    # Content nobody has written or read for this long is no longer anyone's: its owner is forgotten.
    owner_ttl_s: _Seconds = 30 * 86_400.0


class MemoryNamespaceSettings(_Section):
    # Stores every user of a tenant may read and write (a team wiki, a shared cache): not a namespace.
    shared_stores: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    owner_ttl_s: _Seconds = 30 * 86_400.0


class IntakeSettings(BaseModel):
    """What an event may claim before it is believed: bounds on its time and its values. An event time is
    the agent's clock, and one absurd value must not steer every window of a session or a tenant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # An event dated further ahead of the worker's clock than this is judged as happening now.
    max_future_skew_s: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    # The first event of a session dated further back than this is judged as happening now; a later event
    # dated before its session's first event by more than `allowed_lateness_ms` is judged at that start.
    max_event_age_s: Annotated[float, Field(gt=0, le=366 * 86_400)] = 30 * 86_400.0
    # One model turn costing or using more than this is not believed: dead-lettered with the reason.
    max_turn_cost_usd: _Usd = 100.0
    max_turn_tokens: Annotated[int, Field(ge=1, le=10**12)] = 5_000_000
    # Emitters tracked per session by the replay filter; events of further agent_ids are still judged,
    # deduplicated by event_id only (a session cannot grow its state without limit by inventing agents).
    max_agents_per_session: Annotated[int, Field(ge=1, le=10_000)] = 64
    # A seq this far from its emitter's newest, either way, starts a new epoch for that emitter instead of
    # moving (or hiding under) its high mark. The SDK counts microseconds, so 2**40 is ~12 days.
    max_seq_jump: Annotated[int, Field(ge=64, le=2**62)] = 2**40


class DetectorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Windows follow event time; an event older than the session's newest by more than this is counted in
    # totals but left out of windows that have moved past it.
    allowed_lateness_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 5_000
    intake: IntakeSettings = IntakeSettings()
    session_budget: SessionBudget = SessionBudget()
    repeated_tool_call: RepeatedToolCallSettings = RepeatedToolCallSettings()
    similar_calls: SimilarCallsSettings = SimilarCallsSettings()
    no_new_information: NoNewInformationSettings = NoNewInformationSettings()
    cyclic_pattern: CyclicPatternSettings = CyclicPatternSettings()
    agent_ping_pong: AgentPingPongSettings = AgentPingPongSettings()
    no_progress: NoProgressSettings = NoProgressSettings()
    monologue: MonologueSettings = MonologueSettings()
    repeated_error: RepeatedErrorSettings = RepeatedErrorSettings()
    burn_rate: BurnRateSettings = BurnRateSettings()
    session_deadline: SessionDeadlineSettings = SessionDeadlineSettings()
    stall: StallSettings = StallSettings()
    correlated_quiet: CorrelatedQuietSettings = CorrelatedQuietSettings()
    deadlock: DeadlockSettings = DeadlockSettings()
    error_burst: ErrorBurstSettings = ErrorBurstSettings()
    error_propagation: ErrorPropagationSettings = ErrorPropagationSettings()
    context_blowup: ContextBlowupSettings = ContextBlowupSettings()
    context_freshness: ContextFreshnessSettings = ContextFreshnessSettings()
    context_scope: ContextScopeSettings = ContextScopeSettings()
    memory_write_amplification: MemoryWriteAmplificationSettings = MemoryWriteAmplificationSettings()
    tenant_daily_budget: TenantDailyBudgetSettings = TenantDailyBudgetSettings()
    agent_budget: AgentBudgetSettings = AgentBudgetSettings()
    tool_circuit: ToolCircuitSettings = ToolCircuitSettings()
    memory_leak: MemoryLeakSettings = MemoryLeakSettings()
    memory_namespace_leak: MemoryNamespaceSettings = MemoryNamespaceSettings()
    # Partial copies of this section (without tenants/agents), merged over it for one tenant or agent_id.
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _budget_keys_of_version_1(cls, data: Any) -> Any:
        """`detectors.max_steps` (and max_tokens, max_cost_usd) as the first release spelled them: read as
        `detectors.session_budget.*`, so a config file written for it keeps working."""
        if not isinstance(data, dict) or not _LEGACY_BUDGET.intersection(data):
            return data
        moved = {k: v for k, v in data.items() if k not in _LEGACY_BUDGET}
        budget = moved.get("session_budget")
        budget = dict(budget) if isinstance(budget, dict) else {}
        for key in _LEGACY_BUDGET.intersection(data):
            if key in budget:
                raise KeyProblems([f"{key}: given twice, here and at session_budget.{key}; keep one"])
            budget[key] = data[key]
        moved["session_budget"] = budget
        return moved

    @model_validator(mode="after")
    def _overrides_are_valid(self) -> DetectorSettings:
        problems: list[str] = []
        for scope, table in (("tenants", self.tenants), ("agents", self.agents)):
            for name, override in table.items():
                for key in ("tenants", "agents", "allowed_lateness_ms", "intake"):
                    if key in override:
                        problems.append(f"{scope}.{name}.{key}: cannot be overridden per {scope[:-1]}")
                try:
                    self.merged(override)
                except ValidationError as exc:
                    for err in exc.errors(include_url=False):
                        where = ".".join(str(p) for p in err["loc"])
                        problems.append(
                            f"{scope}.{name}.{where}: {err.get('input')!r} is not allowed: {err['msg']}"
                        )
        if problems:
            raise KeyProblems(problems)
        return self

    def merged(self, *overrides: dict[str, Any]) -> DetectorSettings:
        """These settings with the overrides laid over them, in order (each a partial `detectors` section)."""
        data = self.model_dump(exclude={"tenants", "agents"})
        for override in overrides:
            for section, values in override.items():
                if isinstance(values, dict) and isinstance(data.get(section), dict):
                    data[section] = {**data[section], **values}
                else:
                    data[section] = values
        return DetectorSettings.model_validate(data)


def session_detectors(s: DetectorSettings) -> DetectorSet:
    """The session-keyed detectors these settings switch on, each with its mode."""
    armed: list[Armed[Detector]] = []

    def arm(section: _Section, *detectors: Detector) -> None:
        if section.enabled:
            armed.extend(Armed(d, section.mode) for d in detectors)

    b = s.session_budget
    ceilings: list[Detector] = []
    if b.max_steps is not None:
        ceilings.append(StepCeiling(b.max_steps))
    if b.max_tokens is not None:
        ceilings.append(TokenCeiling(b.max_tokens))
    if b.max_cost_usd is not None:
        ceilings.append(CostCeiling(b.max_cost_usd))
    arm(b, *ceilings)
    r = s.repeated_tool_call
    arm(
        r,
        RepeatedToolCall(count=r.count, window_ms=_ms(r.window_s), same_result_count=r.same_result_count),
    )
    sc = s.similar_calls
    arm(sc, SimilarCalls(count=sc.count, window_ms=_ms(sc.window_s), similarity=sc.similarity))
    nn = s.no_new_information
    arm(
        nn,
        NoNewInformation(calls=nn.calls, window_ms=_ms(nn.window_s), min_new_share=nn.min_new_share),
    )
    arm(
        s.cyclic_pattern,
        CyclicPattern(max_period=s.cyclic_pattern.max_period, repeats=s.cyclic_pattern.repeats),
    )
    arm(s.agent_ping_pong, AgentPingPong(exchanges=s.agent_ping_pong.exchanges))
    arm(
        s.no_progress,
        NoProgress(repeats=s.no_progress.repeats, min_output_tokens=s.no_progress.min_output_tokens),
    )
    arm(s.monologue, Monologue(turns=s.monologue.turns))
    re_ = s.repeated_error
    arm(re_, RepeatedError(count=re_.count, same_call_count=re_.same_call_count))
    br = s.burn_rate
    ceiling = br.ceiling_usd if br.ceiling_usd is not None else b.max_cost_usd
    if ceiling is not None:
        arm(
            br,
            BurnRate(
                ceiling_usd=ceiling,
                window_ms=_ms(br.window_s),
                horizon_ms=_ms(br.horizon_s),
                min_spend_usd=br.min_spend_usd,
            ),
        )
    arm(s.session_deadline, SessionDeadline(max_duration_ms=_ms(s.session_deadline.max_duration_s)))
    cq = s.correlated_quiet
    arm(
        s.stall,
        Stall(
            quiet_ms=_ms(s.stall.quiet_s),
            max_call_ms=_ms(s.stall.max_call_s),
            settle_ms=_ms(min(cq.window_s, s.stall.quiet_s)) if cq.enabled and cq.mode == "enforce" else 0,
            report=cq.enabled,
        ),
    )
    arm(s.deadlock, Deadlock())
    e = s.error_burst
    arm(e, ErrorBurst(count=e.count, window_ms=_ms(e.window_s), ratio=e.ratio, min_calls=e.min_calls))
    p = s.error_propagation
    arm(p, ErrorPropagation(agents=p.agents, window_ms=_ms(p.window_s)))
    c = s.context_blowup
    arm(
        c,
        ContextBlowup(
            max_context_tokens=c.max_context_tokens,
            growth_factor=c.growth_factor,
            min_turns=c.min_turns,
            min_growth_tokens=c.min_growth_tokens,
        ),
    )
    f = s.context_freshness
    ttls = {pattern: _ms(ttl) for pattern, ttl in f.ttl_s.items()}
    default_ttl = None if f.default_ttl_s is None else _ms(f.default_ttl_s)
    arm(f, ContextFreshness(ttl_ms=ttls, default_ttl_ms=default_ttl))
    arm(s.context_scope, ContextScope(shared_sources=s.context_scope.shared_sources))
    m = s.memory_write_amplification
    arm(m, MemoryWriteAmplification(writes=m.writes, window_ms=_ms(m.window_s)))
    return tuple(armed)


def keyed_detectors(s: DetectorSettings) -> KeyedSet:
    """The detectors of the stages keyed by tenant, agent, tool and content, each with its mode."""
    armed: list[Armed[KeyedDetector]] = []
    t = s.tenant_daily_budget
    if t.enabled:
        armed.append(Armed(TenantDailyBudget(max_cost_usd=t.max_cost_usd), t.mode))
    a = s.agent_budget
    if a.enabled:
        armed.append(
            Armed(AgentRollingBudget(max_cost_usd=a.max_cost_usd, window_ms=_ms(a.window_s)), a.mode)
        )
    c = s.tool_circuit
    if c.enabled:
        circuit = ToolCircuit(
            window_ms=_ms(c.window_s), min_calls=c.min_calls, error_ratio=c.error_ratio, open_ms=_ms(c.open_s)
        )
        armed.append(Armed(circuit, c.mode))
    q = s.correlated_quiet
    if q.enabled and s.stall.enabled:
        quiet = CorrelatedQuiet(min_sessions=q.min_sessions, window_ms=_ms(q.window_s), hold_ms=_ms(q.hold_s))
        armed.append(Armed(quiet, q.mode))
    if s.memory_leak.enabled:
        armed.append(Armed(ContentOwnership(ttl_ms=_ms(s.memory_leak.owner_ttl_s)), s.memory_leak.mode))
    n = s.memory_namespace_leak
    if n.enabled:
        armed.append(Armed(MemoryNamespace(shared_stores=n.shared_stores, ttl_ms=_ms(n.owner_ttl_s)), n.mode))
    return tuple(armed)


S = TypeVar("S")


def _layered(settings: DetectorSettings, arm: Callable[[DetectorSettings], S]) -> Callable[[str, str], S]:
    """(tenant_id, agent_id) -> what `arm` builds for that agent: agent over tenant over defaults."""
    default = arm(settings)

    @cache
    def resolve(tenant_id: str, agent_id: str) -> S:
        layers = [
            o for o in (settings.tenants.get(tenant_id), settings.agents.get(agent_id)) if o is not None
        ]
        return arm(settings.merged(*layers)) if layers else default

    def policy(tenant_id: str, agent_id: str) -> S:
        if tenant_id not in settings.tenants and agent_id not in settings.agents:
            return default
        return resolve(tenant_id, agent_id)

    return policy


def build_policy(settings: DetectorSettings) -> Policy:
    """The session-keyed detectors for each (tenant_id, agent_id)."""
    return _layered(settings, session_detectors)


def build_suite(settings: DetectorSettings, clock: Clock) -> DetectorSuite:
    """The suite these settings describe: the worker and `tripwire replay` build it here, the same way."""
    intake = settings.intake
    return DetectorSuite(
        build_policy(settings),
        clock,
        allowed_lateness_ms=settings.allowed_lateness_ms,
        max_agents=intake.max_agents_per_session,
        max_seq_jump=intake.max_seq_jump,
    )


def build_keyed_policy(settings: DetectorSettings) -> KeyedPolicy:
    """The keyed stages' detectors for each (tenant_id, agent_id)."""
    return _layered(settings, keyed_detectors)
