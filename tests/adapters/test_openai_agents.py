"""The OpenAI Agents SDK adapter with the real `agents` runner, a fake model and a real worker.

The fake models are `agents.models.interface.Model` subclasses that answer from a script, so nothing leaves
the machine; the worker judges their events with only the session budget on (`max_steps=5`) and kills the
runaway. Waits are for conditions with deadlines; the runaway's own bound is a deadline, not a turn count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelResponse,
    ModelSettings,
    Tool,
    TResponseInputItem,
    Usage,
    function_tool,
    set_tracing_disabled,
)
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseOutputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from agents_contract import CommandSigner, SessionKilled, ToolCircuitOpen, digest, encode_command
from agents_contract.adapters.openai_agents import guarded_run, guarded_run_sync
from streams import RecordProducer
from streams.lab._stack import LocalStack
from tests.adapters.harness import DEADLINE_S, search_circuit_open, session_events, sync_session, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

INPUT_TOKENS, OUTPUT_TOKENS = 120, 8
FOUND = "tripwire: a runtime guardrail for LLM agents"

set_tracing_disabled(True)


# -- the fake model and tool ---------------------------------------------------------------------------


def tool_call(name: str, arguments: dict[str, Any], n: int) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call", name=name, arguments=orjson.dumps(arguments).decode(), call_id=f"call-{n}"
    )


def message(text: str) -> ResponseOutputMessage:
    content = ResponseOutputText(type="output_text", text=text, annotations=[])
    return ResponseOutputMessage(
        type="message", id="msg", role="assistant", status="completed", content=[content]
    )


class ScriptedModel(Model):
    """A model whose n-th answer is `script(n)`; it counts its calls and keeps the inputs it was sent."""

    def __init__(
        self, script: Callable[[int], TResponseOutputItem], *, deadline_s: float = DEADLINE_S
    ) -> None:
        self.script = script
        self.calls = 0
        self.inputs: list[str | list[TResponseInputItem]] = []
        self.last_call_ms = 0
        self._deadline = time.monotonic() + deadline_s

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        if time.monotonic() > self._deadline:
            raise AssertionError(f"the model was still being called {DEADLINE_S:g}s in: no kill came")
        self.calls += 1
        self.inputs.append(input)
        self.last_call_ms = int(time.time() * 1000)
        usage = Usage(
            requests=1,
            input_tokens=INPUT_TOKENS,
            output_tokens=OUTPUT_TOKENS,
            total_tokens=INPUT_TOKENS + OUTPUT_TOKENS,
        )
        return ModelResponse(output=[self.script(self.calls)], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the tests run the agent unstreamed")


class SearchTool:
    """The `search` function tool; counts its runs. From run `hang_from` on, it hangs (past any deadline)."""

    def __init__(self, *, hang_from: int | None = None) -> None:
        self.runs = 0
        self.last_run_ms = 0
        self.finished_hanging = False

        @function_tool
        async def search(q: str) -> str:
            """Search the web."""
            self.runs += 1
            self.last_run_ms = int(time.time() * 1000)
            if hang_from is not None and self.runs >= hang_from:
                await asyncio.sleep(DEADLINE_S * 2)
                self.finished_hanging = True
            # A tool takes time; an instant one could outrun any kill on a busy machine.
            await asyncio.sleep(0.002)
            return FOUND

        self.tool: FunctionTool = search


def runaway(tool: SearchTool) -> tuple[Agent[Any], ScriptedModel]:
    """An agent that asks for the same search forever."""
    model = ScriptedModel(lambda n: tool_call("search", {"q": "same"}, n))
    return Agent(name="researcher", instructions="Find it.", model=model, tools=[tool.tool]), model


def tool_outputs(model: ScriptedModel) -> list[Any]:
    """Every tool result the model was shown."""
    return [
        item.get("output")
        for sent in model.inputs
        if isinstance(sent, list)
        for item in sent
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


class Snapshot:
    """The fake model's calls and the tool's runs at the moment the kill was received (`session.on_kill`)."""

    def __init__(self, model: ScriptedModel, tool: SearchTool) -> None:
        self.model, self.tool = model, tool
        self.at_kill: tuple[int, int] | None = None

    def __call__(self, command: object) -> None:
        self.at_kill = (self.model.calls, self.tool.runs)

    def assert_nothing_ran_after_the_kill(self) -> None:
        assert self.at_kill is not None, "the kill was never received"
        assert self.at_kill[0] > 0
        assert (self.model.calls, self.tool.runs) == self.at_kill


# -- the stack's events ---------------------------------------------------------------------------------


def acked_stopped(events: list[dict[str, Any]]) -> bool:
    return any(e["kind"] == "control.ack" and e["outcome"] == "stopped" for e in events)


def assert_stopped_after_the_run(events: list[dict[str, Any]], *, last_activity_ms: int) -> None:
    """`stopped` is acknowledged once, after every call of the run ended (each reported ended before it)."""
    stopped = [i for i, e in enumerate(events) if e["kind"] == "control.ack" and e["outcome"] == "stopped"]
    assert len(stopped) == 1
    before = events[: stopped[0]]
    kinds = [e["kind"] for e in before]
    assert kinds.count("turn.started") == kinds.count("turn.completed") > 0
    assert kinds.count("tool.called") == kinds.count("tool.returned") > 0
    assert all(e["kind"] != "control.ack" or e["outcome"] == "stopping" for e in before)
    assert not any(e["kind"] in ("turn.started", "tool.called") for e in events[stopped[0] :])
    assert events[stopped[0]]["event_time_ms"] >= last_activity_ms


@contextlib.contextmanager
def closing_run_sync_loop() -> Iterator[None]:
    """`Runner.run_sync` leaves the event loop it made for its thread open, on purpose (run.py, run_sync):
    close it when the thread is done with it."""
    try:
        yield
    finally:
        policy = asyncio.get_event_loop_policy()
        policy.get_event_loop().close()
        policy.set_event_loop(None)


# -- the tests ------------------------------------------------------------------------------------------


async def test_a_runaway_agent_is_stopped_at_the_kill(stack: LocalStack) -> None:
    tool = SearchTool()
    agent, model = runaway(tool)
    snapshot = Snapshot(model, tool)
    async with (
        stack.guard() as guard,
        guard.session("s-oa-runaway", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        session.on_kill(snapshot)
        with pytest.raises(SessionKilled) as killed:
            await guarded_run(session, agent, "Find it.", max_turns=None)
        assert killed.value.command.detector == "max_steps"
        snapshot.assert_nothing_ran_after_the_kill()
        # The kill never reached the model as a tool result: it saw only what the tool returned.
        assert set(tool_outputs(model)) == {FOUND}

    events = await session_events(stack, "s-oa-runaway", acked_stopped)
    assert_stopped_after_the_run(events, last_activity_ms=max(model.last_call_ms, tool.last_run_ms))
    assert {e["agent_id"] for e in events if e["kind"] in ("turn.started", "tool.called")} == {"researcher"}


async def test_a_healthy_team_run_returns_its_output_and_reports_its_calls(stack: LocalStack) -> None:
    tool = SearchTool()
    researcher_model = ScriptedModel(
        lambda n: tool_call("search", {"q": "tripwire"}, n) if n == 1 else message(f"Found: {FOUND}")
    )
    researcher = Agent(name="researcher", model=researcher_model, tools=[tool.tool])
    triage_model = ScriptedModel(lambda n: tool_call("transfer_to_researcher", {}, 100 + n))
    triage = Agent(name="triage desk", model=triage_model, handoffs=[researcher])

    async with (
        stack.guard() as guard,
        guard.session("s-oa-healthy", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        result = await guarded_run(session, triage, "What is tripwire?")
    assert result.final_output == f"Found: {FOUND}"
    assert result.last_agent is researcher
    assert (triage_model.calls, researcher_model.calls, tool.runs) == (1, 2, 1)

    events = await session_events(
        stack, "s-oa-healthy", lambda es: any(e["kind"] == "session.ended" for e in es)
    )
    calls = [
        (e["kind"], e["agent_id"])
        for e in events
        if e["kind"] in ("turn.started", "turn.completed", "tool.called", "tool.returned", "message.sent")
    ]
    assert calls == [
        ("message.sent", "user"),  # the run's input, a user's message to the session's agent
        ("turn.started", "triage_desk"),
        ("turn.completed", "triage_desk"),
        ("message.sent", "triage_desk"),
        ("turn.started", "researcher"),
        ("turn.completed", "researcher"),
        ("tool.called", "researcher"),
        ("tool.returned", "researcher"),
        ("turn.started", "researcher"),
        ("turn.completed", "researcher"),
    ]
    turns = [e for e in events if e["kind"] == "turn.completed"]
    assert {
        (e["gen_ai.usage.input_tokens"], e["gen_ai.usage.output_tokens"], e["context_tokens"]) for e in turns
    } == {(INPUT_TOKENS, OUTPUT_TOKENS, INPUT_TOKENS)}
    asked, handoff = [e for e in events if e["kind"] == "message.sent"]
    assert asked["to_agent_id"] == events[0]["agent_id"]
    assert asked["content_digest"] == digest("What is tripwire?")
    assert asked["content_sketch"]
    assert handoff["to_agent_id"] == "researcher"
    (called,) = [e for e in events if e["kind"] == "tool.called"]
    (returned,) = [e for e in events if e["kind"] == "tool.returned"]
    assert called["gen_ai.tool.name"] == returned["gen_ai.tool.name"] == "search"
    assert (returned["status"], returned["result_digest"]) == ("ok", digest(FOUND))
    assert (events[-1]["kind"], events[-1]["outcome"]) == ("session.ended", "completed")


async def test_run_sync_with_a_sync_session_is_stopped_at_the_kill(stack: LocalStack) -> None:
    tool = SearchTool()
    agent, model = runaway(tool)
    snapshot = Snapshot(model, tool)

    def run_in_a_thread() -> SessionKilled:
        # Runner.run_sync runs on an event loop of its own in this thread; the guard on one of its own.
        with closing_run_sync_loop(), sync_session(stack, "s-oa-sync", agent_id="team") as session:
            session.on_kill(snapshot)
            with pytest.raises(SessionKilled) as killed:
                guarded_run_sync(session, agent, "Find it.", max_turns=None)
            return killed.value

    killed = await asyncio.to_thread(run_in_a_thread)
    assert killed.command.detector == "max_steps"
    snapshot.assert_nothing_ran_after_the_kill()
    assert set(tool_outputs(model)) == {FOUND}

    events = await session_events(stack, "s-oa-sync", acked_stopped)
    assert_stopped_after_the_run(events, last_activity_ms=max(model.last_call_ms, tool.last_run_ms))


async def test_run_sync_hung_in_a_tool_is_cancelled_at_the_kill(stack: LocalStack) -> None:
    # Steps: turn, search, turn, search, turn, search: the sixth (the third search) breaches max_steps=5, and
    # the kill must arrive while that search hangs, and end it.
    tool = SearchTool(hang_from=3)
    agent, model = runaway(tool)
    snapshot = Snapshot(model, tool)

    def run_in_a_thread() -> None:
        with closing_run_sync_loop(), sync_session(stack, "s-oa-sync-hung", agent_id="team") as session:
            session.on_kill(snapshot)
            with pytest.raises(SessionKilled):
                guarded_run_sync(session, agent, "Find it.", max_turns=None)

    started = time.monotonic()
    await asyncio.to_thread(run_in_a_thread)
    assert time.monotonic() - started < DEADLINE_S
    assert not tool.finished_hanging
    assert snapshot.at_kill == (model.calls, tool.runs) == (3, 3)

    events = await session_events(stack, "s-oa-sync-hung", acked_stopped)
    assert_stopped_after_the_run(events, last_activity_ms=max(model.last_call_ms, tool.last_run_ms))
    acks = [e["outcome"] for e in events if e["kind"] == "control.ack"]
    assert acks == ["stopping", "stopped"]  # the run was still in the hung search when the kill came
    (hung,) = [e for e in events if e["kind"] == "tool.returned" and e["status"] == "error"]
    assert hung["error.type"] == "SessionKilled"


async def test_a_tool_switched_off_by_tripwire_does_not_run_and_the_caller_is_told(stack: LocalStack) -> None:
    tool = SearchTool()
    model = ScriptedModel(lambda n: tool_call("search", {"q": "tripwire"}, n))
    agent = Agent(name="researcher", model=model, tools=[tool.tool])
    async with (
        stack.guard() as guard,
        guard.session("s-oa-circuit", agent_id="team", tenant_id="t", user_id="u") as session,
        RecordProducer(stack.bootstrap, idempotent=stack.idempotent, security=stack.security) as producer,
    ):
        command = search_circuit_open(issued_at_ms=guard.now_ms())
        raw = encode_command(CommandSigner(stack.signing_key).sign(command))
        await (await producer.send(stack.topics["control"], b"search", raw))

        async def opened() -> bool:
            return guard.tool_circuits.state("search") == "open"

        await wait_for("the search circuit to open", opened)
        with pytest.raises(ToolCircuitOpen) as switched_off:
            await guarded_run(session, agent, "What is tripwire?")
        assert switched_off.value.tool == "search"
        # Tripwire's own error, in place of the runner's wrapping of what the tool-start hook raised.
        assert "Error running tool search" in str(switched_off.value.__cause__)
        assert (model.calls, tool.runs) == (1, 0)
        assert not session.killed
