"""The CrewAI adapter with real CrewAI and a fake model, against a real worker on the test broker.

The fake model is a CrewAI `BaseLLM` that answers in the ReAct text CrewAI's executor parses (a model without
native function calling): it asks for the same tool with a new query every time, so a crew left alone runs
until its iteration cap. One worker serves the module with `max_steps` as the only detector; the kill for the
step that crosses it is what stops the crew. A kill lands wherever the crew happens to be, so each runaway
test holds the crew in one place (in a tool, in a model call, between steps) from the breaching step until
the kill is received, and then counts every model call and tool run that started after that moment. Nothing
waits on a sleep: every wait is for a condition, with a deadline that only a broken kill path reaches.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from agents_contract import BudgetExhausted, CommandSigner, GuardedSession, KillCommand, SessionKilled, digest
from agents_contract.adapters.crewai import guarded_kickoff, guarded_kickoff_async
from streams.lab._stack import LocalStack, budget_only
from tests.adapters.harness import DEADLINE_S, kill_acks, search_circuit_open, session_events, sync_session

# No telemetry or tracing: nothing here may reach past the test broker.
os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"
with warnings.catch_warnings():
    # CrewAI's lazy submodules trip an ImportWarning while it imports itself.
    warnings.filterwarnings("ignore", category=ImportWarning)
    pytest.importorskip("crewai", reason="CrewAI is not installed: pip install tripwire-guardrail[crewai]")
    from crewai import Agent, Crew, Task
    from crewai.hooks import HookAborted
    from crewai.llms.base_llm import BaseLLM
    from crewai.tools import BaseTool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    # The test's step callback is a closure; CrewAI warns that it could not checkpoint it (nothing here does).
    pytest.mark.filterwarnings("ignore:function callbacks cannot be serialized:UserWarning"),
    # CrewAI reads its own deprecated fields (function_calling_llm) while it validates an agent.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
]

MAX_STEPS = 5
ROLE = "Research Analyst"
AGENT_ID = "Research_Analyst"
ANSWER = "The answer is 42."
# A runaway crew that is not stopped answers after this many calls: a failed test, not a hung one.
RUNAWAY_ITERATIONS = 400


@pytest.fixture(scope="module")
def detectors() -> dict[str, Any]:
    """The module's worker (the `stack` fixture) judges with max_steps=5, and 6 for tenant t6."""
    return {**budget_only(max_steps=MAX_STEPS), "tenants": {"t6": {"session_budget": {"max_steps": 6}}}}


Hold = Literal["tool", "model", "step", "nowhere"]


class Ledger:
    """What the fake model and tool did, and when the kill was received (marked by `session.on_kill`)."""

    def __init__(self, *, hold: Hold = "nowhere", breached: Callable[[], bool] = lambda: False) -> None:
        self.hold = hold
        self.breached = breached
        self.kill_received = threading.Event()
        self._lock = threading.Lock()
        self.model_calls = self.tool_runs = 0
        self.model_calls_after_kill = self.tool_runs_after_kill = 0
        self.crew_ended_ms: int | None = None
        self.held: Hold | None = None
        self.prompts: list[str] = []

    def on_kill(self, command: KillCommand) -> None:
        self.kill_received.set()

    def model_call(self) -> int:
        with self._lock:
            self.model_calls += 1
            self.model_calls_after_kill += self.kill_received.is_set()
            return self.model_calls

    def tool_run(self) -> None:
        with self._lock:
            self.tool_runs += 1
            self.tool_runs_after_kill += self.kill_received.is_set()

    def maybe_hold(self, where: Hold) -> None:
        """From the step that crossed max_steps, stay `where` until the kill arrives: a model call or a tool
        takes seconds in real life, and that is where a kill lands."""
        if where == self.hold and self.breached():
            self.held = where
            assert self.kill_received.wait(DEADLINE_S), "the kill never arrived"


class ScriptedModel(BaseLLM):
    """A fake model: asks for `search` with a new query each call (no cache hit, no repeated-call stop) and
    gives the final answer after `answer_after` calls. It reports token usage as CrewAI's providers do."""

    ledger: Any
    answer_after: int = RUNAWAY_ITERATIONS

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        n = self.ledger.model_call()
        self.ledger.prompts.append(str(messages))
        self.ledger.maybe_hold("model")
        self._track_token_usage_internal({"prompt_tokens": 10, "completion_tokens": 5})
        if n > self.answer_after:
            return f"Thought: I know it now.\nFinal Answer: {ANSWER}"
        return f'Thought: I need to search again.\nAction: search\nAction Input: {{"query": "q{n}"}}'


class Search(BaseTool):
    name: str = "search"
    description: str = "Searches the archive for a query."
    ledger: Any

    def _run(self, query: str) -> str:
        self.ledger.tool_run()
        self.ledger.maybe_hold("tool")
        return f"nothing found for {query}"


def timed_crew(ledger: Ledger, *, answer_after: int = RUNAWAY_ITERATIONS) -> Crew:
    agent = Agent(
        role=ROLE,
        goal="Find the answer.",
        backstory="Searches until it knows.",
        llm=ScriptedModel(model="fake-model", ledger=ledger, answer_after=answer_after),
        tools=[Search(ledger=ledger)],
        max_iter=RUNAWAY_ITERATIONS + 10,
        step_callback=lambda step: ledger.maybe_hold("step"),
        verbose=False,
    )
    task = Task(description="Find the answer to {question}.", expected_output="The answer.", agent=agent)
    return TimedCrew(agents=[agent], tasks=[task], verbose=False, ledger=ledger)


class TimedCrew(Crew):
    """A crew that notes when its kickoff really returned, in whichever thread ran it."""

    ledger: Any = None

    def kickoff(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().kickoff(*args, **kwargs)
        finally:
            self.ledger.crew_ended_ms = int(time.time() * 1000)


@dataclass(frozen=True)
class Told:
    """The ledger (and the session's steps past the breach) at the moment the caller got `SessionKilled`."""

    model_calls: int
    tool_runs: int
    crew_ended: bool
    steps_after_breach: int | None


def told(ledger: Ledger, session: GuardedSession) -> Told:
    ended = ledger.crew_ended_ms is not None
    return Told(ledger.model_calls, ledger.tool_runs, ended, session.steps_after_breach)


def assert_stopped_at_once(
    ledger: Ledger, when_told: Told, killed: pytest.ExceptionInfo[SessionKilled], *, by_hook: bool = True
) -> None:
    assert killed.value.command.detector == "max_steps"
    # The kill landed where the test held the crew, and the crew took no step past the breaching one.
    assert ledger.held == ledger.hold
    assert when_told.steps_after_breach == 0
    if by_hook:
        # CrewAI's deliberate stop, which it neither retries nor shows to the model, is what ended the run.
        assert isinstance(killed.value.__cause__, HookAborted)
    assert when_told.crew_ended, "the caller was told before the crew's kickoff returned"
    assert (ledger.model_calls_after_kill, ledger.tool_runs_after_kill) == (0, 0)


async def assert_acknowledged_after_the_crew_ended(
    stack: LocalStack, session_id: str, ledger: Ledger, command_id: str, when_told: Told
) -> None:
    acks = await kill_acks(stack, session_id, command_id)
    # `stopping` while the crew was still running, `stopped` once its kickoff had returned.
    assert [a["outcome"] for a in acks] == ["stopping", "stopped"]
    assert ledger.crew_ended_ms is not None
    assert acks[1]["event_time_ms"] >= ledger.crew_ended_ms
    # The crew's thread stayed stopped: nothing ran in the time it took to read the acknowledgements.
    assert (ledger.model_calls, ledger.tool_runs) == (when_told.model_calls, when_told.tool_runs)


@pytest.mark.parametrize("hold", ["tool", "step"], ids=["in-a-tool", "between-steps"])
async def test_a_runaway_crew_kicked_off_sync_stops_at_the_kill(stack: LocalStack, hold: Hold) -> None:
    session_id = f"s-crew-sync-{hold}"
    outcome: dict[str, Any] = {}

    def run() -> None:
        with sync_session(stack, session_id, agent_id="crew") as session:
            ledger = Ledger(hold=hold, breached=lambda: session.steps > MAX_STEPS)
            session.on_kill(ledger.on_kill)
            with pytest.raises(SessionKilled) as killed:
                guarded_kickoff(session, timed_crew(ledger), {"question": "life"})
            outcome.update(ledger=ledger, killed=killed, told=told(ledger, session.session))
            # A killed session refuses a new kickoff before the crew makes a single call.
            with pytest.raises(SessionKilled):
                guarded_kickoff(session, timed_crew(ledger), {"question": "again"})

    await asyncio.to_thread(run)
    ledger, killed, when_told = outcome["ledger"], outcome["killed"], outcome["told"]
    assert_stopped_at_once(ledger, when_told, killed)
    await assert_acknowledged_after_the_crew_ended(
        stack, session_id, ledger, killed.value.command.command_id, when_told
    )


@pytest.mark.parametrize(
    ("hold", "enclosed"),
    [
        # Tenant t6's max_steps=6 makes the breaching step the fourth model call (with 5 it is the third tool
        # call). The enclosing session.run has the kill cancel the caller while the crew's thread is in it.
        pytest.param("model", True, id="in-a-model-call-under-run"),
        pytest.param("step", False, id="between-steps"),
    ],
)
async def test_a_runaway_crew_kicked_off_async_stops_at_the_kill(
    stack: LocalStack, hold: Hold, enclosed: bool
) -> None:
    tenant, max_steps = ("t6", 6) if hold == "model" else ("t", MAX_STEPS)
    session_id = f"s-crew-async-{hold}"
    async with (
        stack.guard() as guard,
        guard.session(session_id, agent_id="crew", tenant_id=tenant, user_id="u") as session,
    ):
        ledger = Ledger(hold=hold, breached=lambda: session.steps > max_steps)
        session.on_kill(ledger.on_kill)
        kickoff = guarded_kickoff_async(session, timed_crew(ledger), {"question": "life"})
        with pytest.raises(SessionKilled) as killed:
            await (session.run(kickoff) if enclosed else kickoff)
        when_told = told(ledger, session)
        with pytest.raises(SessionKilled):
            await guarded_kickoff_async(session, timed_crew(ledger), {"question": "again"})
    assert_stopped_at_once(ledger, when_told, killed, by_hook=not enclosed)
    await assert_acknowledged_after_the_crew_ended(
        stack, session_id, ledger, killed.value.command.command_id, when_told
    )


def assert_reported(events: list[dict[str, Any]], *, agent_id: str, cost_usd: float) -> None:
    steps = [
        e for e in events if e["kind"] in ("turn.started", "turn.completed", "tool.called", "tool.returned")
    ]
    assert [e["kind"] for e in steps] == [
        "turn.started",
        "turn.completed",
        "tool.called",
        "tool.returned",
        "turn.started",
        "turn.completed",
    ]
    assert {e["agent_id"] for e in steps} == {agent_id}
    turns = [e for e in steps if e["kind"] == "turn.completed"]
    usage = [(t["gen_ai.usage.input_tokens"], t["gen_ai.usage.output_tokens"], t["cost_usd"]) for t in turns]
    assert usage == [(10, 5, cost_usd)] * 2
    assert {e["gen_ai.request.model"] for e in steps if e["kind"].startswith("turn.")} == {"fake-model"}
    called, returned = steps[2], steps[3]
    assert called["gen_ai.tool.name"] == returned["gen_ai.tool.name"] == "search"
    assert called["args_digest"]
    assert returned["status"] == "ok"
    assert returned["result_digest"] == digest("nothing found for q1")


def ended(events: list[dict[str, Any]]) -> bool:
    return any(e["kind"] == "session.ended" for e in events)


def per_million_tokens(model: str, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens + output_tokens) / 1_000_000


async def test_a_healthy_crew_returns_its_output_untouched_and_is_reported(stack: LocalStack) -> None:
    def run_sync() -> Any:
        with sync_session(stack, "s-crew-ok-sync", agent_id="crew") as session:
            crew = timed_crew(Ledger(), answer_after=1)
            return guarded_kickoff(session, crew, {"question": "life"}, cost_usd=per_million_tokens)

    output = await asyncio.to_thread(run_sync)
    assert output.raw == ANSWER

    async with (
        stack.guard() as guard,
        guard.session("s-crew-ok-async", agent_id="crew", tenant_id="t", user_id="u") as session,
    ):
        crew = timed_crew(Ledger(), answer_after=1)
        output = await guarded_kickoff_async(session, crew, {"question": "life"}, agents={ROLE: "analyst"})
    assert output.raw == ANSWER

    for session_id, agent_id, cost_usd in (
        ("s-crew-ok-sync", AGENT_ID, 15 / 1_000_000),
        ("s-crew-ok-async", "analyst", 0.0),
    ):
        events = await session_events(stack, session_id, ended)
        assert_reported(events, agent_id=agent_id, cost_usd=cost_usd)
        assert events[-1]["outcome"] == "completed"
        # The kickoff's inputs are the user's request to the crew, reported before its first step.
        (asked,) = [e for e in events if e["kind"] == "message.sent"]
        assert (asked["agent_id"], asked["to_agent_id"]) == ("user", "crew")
        assert asked["content_digest"] == digest({"question": "life"})
        assert events.index(asked) < min(i for i, e in enumerate(events) if e["kind"] == "turn.started")


async def test_the_budget_gate_refuses_the_step_past_the_budget_before_it_runs(stack: LocalStack) -> None:
    ledger = Ledger()

    def run() -> pytest.ExceptionInfo[BudgetExhausted]:
        with sync_session(stack, "s-crew-gate", agent_id="crew", budget_gate=True) as session:
            with pytest.raises(BudgetExhausted) as refused:
                guarded_kickoff(session, timed_crew(ledger), {"question": "life"})
            return refused

    refused = await asyncio.to_thread(run)
    assert refused.value.limit == "session_budget.max_steps"
    assert isinstance(refused.value.__cause__, HookAborted)
    # Five steps passed (three model calls, two tools); the sixth, the third tool call, never ran.
    assert (ledger.model_calls, ledger.tool_runs) == (3, 2)


async def test_a_tool_switched_off_by_tripwire_does_not_run_and_the_model_is_told(stack: LocalStack) -> None:
    ledger = Ledger()
    async with (
        stack.guard() as guard,
        guard.session("s-crew-circuit", agent_id="crew", tenant_id="t", user_id="u") as session,
    ):
        switched_off = search_circuit_open(issued_at_ms=guard.now_ms())
        assert guard.tool_circuits.apply(CommandSigner(stack.signing_key).sign(switched_off))
        crew = timed_crew(ledger, answer_after=1)
        output = await guarded_kickoff_async(session, crew, {"question": "life"})
    # Not a stop: the model hears the tool is off, in place of its result, and the crew finishes.
    assert output.raw == ANSWER
    assert ledger.tool_runs == 0
    assert "Tool unavailable: tool search is switched off by Tripwire" in ledger.prompts[1]
