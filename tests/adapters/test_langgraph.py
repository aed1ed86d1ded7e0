"""The LangGraph adapter with real LangGraph, fake chat models and a real worker on the test broker.

The runaway graph is the one that used to outlive its kill: a ReAct loop whose ToolNode handles tool errors
(so an error raised in a tool goes back to the model) and whose nodes retry on any exception. Its fake model
asks for the same search forever; the kill (max_steps) must stop it with nothing more reaching the model or
the tool. Nothing waits on a sleep: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import RetryPolicy

from agents_contract import (
    BudgetExhausted,
    GuardedSession,
    KillCommand,
    SessionKilled,
    SyncSession,
    digest,
)
from agents_contract.adapters.langgraph import guard_graph
from streams.lab._stack import LocalStack
from tests.adapters.harness import gate_limits_published, kill_acks, session_events, sync_session

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# Far more steps than any kill takes to arrive: reaching it means the kill path is broken.
RUNAWAY_STEPS = 20_000
# The adversarial retry: any exception, at once, many times (LangGraph's default retries nothing).
RETRY_ALL = RetryPolicy(initial_interval=0.0, jitter=False, max_attempts=50, retry_on=lambda _: True)


class RunawayModel(BaseChatModel):
    """Asks for the same search on every call, so the graph around it never ends on its own. Counts the calls
    that reached it, and any tool error it was shown."""

    calls: int = 0
    errors_seen: int = 0

    @property
    def _llm_type(self) -> str:
        return "runaway"

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        self.calls += 1
        self.errors_seen += sum(1 for m in messages if isinstance(m, ToolMessage) and m.status == "error")
        call = {"name": "search", "args": {"q": "same"}, "id": uuid.uuid4().hex, "type": "tool_call"}
        usage = {"input_tokens": 120, "output_tokens": 8, "total_tokens": 128}
        message = AIMessage(content="", tool_calls=[call], usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        reply = self._reply(messages)
        await asyncio.sleep(0.002)  # a model takes time; an instant one could outrun any kill
        return reply


class Searches:
    """The search tool, sync and async, counting the runs that began."""

    def __init__(self) -> None:
        self.runs = 0
        self._lock = threading.Lock()

    def _began(self) -> None:
        with self._lock:
            self.runs += 1

    def tool(self, *, sync: bool) -> BaseTool:
        # A tool takes time; an instant one could outrun any kill on a busy machine.
        if sync:

            @tool
            def search(q: str) -> str:
                """Search the web."""
                self._began()
                time.sleep(0.002)
                return "nothing new"

            return search

        @tool
        async def asearch(q: str) -> str:
            """Search the web."""
            self._began()
            await asyncio.sleep(0.002)
            return "nothing new"

        asearch.name = "search"
        return asearch


def react_graph(
    model: BaseChatModel, tools: list[BaseTool], *, sync: bool = False, retry: RetryPolicy | None = None
) -> Any:
    """A hand-built ReAct agent: the model node, a ToolNode that hands tool errors back to the model."""

    def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent if sync else aagent, retry_policy=retry)
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=True), retry_policy=retry)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile()


class RunEnd(BaseCallbackHandler):
    """Notes when the graph's root run ended, by LangGraph's own account."""

    def __init__(self) -> None:
        self.ended_ms: float | None = None

    def on_chain_end(
        self, outputs: Any, *, run_id: uuid.UUID, parent_run_id: uuid.UUID | None = None, **kw: Any
    ) -> None:
        if parent_run_id is None:
            self.ended_ms = time.time() * 1000

    def on_chain_error(
        self, error: BaseException, *, run_id: uuid.UUID, parent_run_id: uuid.UUID | None = None, **kw: Any
    ) -> None:
        if parent_run_id is None:
            self.ended_ms = time.time() * 1000


def counting_at_kill(
    session: GuardedSession | SyncSession, model: RunawayModel, searches: Searches
) -> dict[str, int]:
    """The model calls and tool runs so far, taken at the moment the kill is received."""
    at_kill: dict[str, int] = {}

    def mark(command: KillCommand) -> None:
        at_kill.update(model=model.calls, tool=searches.runs)

    session.on_kill(mark)
    return at_kill


async def check_acknowledged_after_the_run(
    stack: LocalStack, session_id: str, command_id: str, ended_ms: float | None
) -> None:
    acks = await kill_acks(stack, session_id, command_id)
    # Received mid-run: `stopping` at once (unless the run had already unwound by then), `stopped` only once
    # the run (LangGraph's root run, by its own callbacks) had ended.
    assert [a["outcome"] for a in acks] in (["stopping", "stopped"], ["stopped"])
    stopped = next(a for a in acks if a["outcome"] == "stopped")
    assert ended_ms is not None
    assert stopped["event_time_ms"] >= int(ended_ms)


@pytest.mark.parametrize("method", ["ainvoke", "astream"])
async def test_a_runaway_react_graph_is_stopped_at_the_kill(stack: LocalStack, method: str) -> None:
    model, searches = RunawayModel(), Searches()
    graph = react_graph(model, [searches.tool(sync=False)], retry=RETRY_ALL)
    end = RunEnd()
    config: RunnableConfig = {"recursion_limit": RUNAWAY_STEPS, "callbacks": [end]}
    sid = f"s-lg-{method}"
    async with (
        stack.guard() as guard,
        guard.session(sid, agent_id="a1", tenant_id="t", user_id="u") as session,
    ):
        at_kill = counting_at_kill(session, model, searches)
        guarded = guard_graph(graph, session)
        inputs = {"messages": [("user", "find it")]}

        async def run() -> None:
            if method == "ainvoke":
                await guarded.ainvoke(inputs, config)
            else:
                async for _ in guarded.astream(inputs, config, stream_mode="updates"):
                    pass

        with pytest.raises(SessionKilled) as killed:
            await run()
        assert killed.value.command.detector == "max_steps"
        assert at_kill, "the run ended without the kill having been received"
        assert (model.calls - at_kill["model"], searches.runs - at_kill["tool"]) == (0, 0)
        assert model.errors_seen == 0  # nothing about the kill (or any error) was shown to the model
        # Once killed, the graph is refused without running.
        calls = model.calls
        with pytest.raises(SessionKilled):
            await guarded.ainvoke(inputs, config)
        assert model.calls == calls
        command_id = killed.value.command.command_id
    await check_acknowledged_after_the_run(stack, sid, command_id, end.ended_ms)


async def test_a_healthy_team_run_returns_its_result_and_reports_each_agent(stack: LocalStack) -> None:
    def team() -> Any:
        """A researcher (a ReAct subgraph that searches once) hands over to a writer (one model call)."""
        asks = AIMessage(
            content="",
            tool_calls=[{"name": "search", "args": {"q": "tripwire"}, "id": "call-1", "type": "tool_call"}],
            usage_metadata={"input_tokens": 50, "output_tokens": 7, "total_tokens": 57},
        )
        found = AIMessage(
            content="found it", usage_metadata={"input_tokens": 80, "output_tokens": 3, "total_tokens": 83}
        )
        report = AIMessage(
            content="the report", usage_metadata={"input_tokens": 90, "output_tokens": 4, "total_tokens": 94}
        )
        researcher = react_graph(
            GenericFakeChatModel(messages=iter([asks, found])), [Searches().tool(sync=False)]
        )
        writer_model = GenericFakeChatModel(messages=iter([report]))

        async def writer(state: MessagesState) -> dict[str, list[BaseMessage]]:
            return {"messages": [await writer_model.ainvoke(state["messages"])]}

        builder = StateGraph(MessagesState)
        builder.add_node("researcher", researcher)
        builder.add_node("writer", writer)
        builder.add_edge(START, "researcher")
        builder.add_edge("researcher", "writer")
        return builder.compile()

    def shape(result: dict[str, list[BaseMessage]]) -> list[tuple[str, Any]]:
        return [(m.type, m.content) for m in result["messages"]]

    inputs = {"messages": [("user", "write a report on tripwire")]}
    unguarded = await team().ainvoke(inputs)
    # 4 steps (3 turns, 1 tool call): under the stack's max_steps of 5.
    async with (
        stack.guard() as guard,
        guard.session("s-lg-team", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        guarded = guard_graph(team(), session, agents={"researcher": "researcher", "writer": "writer"})
        result = await guarded.ainvoke(inputs)
    assert shape(result) == shape(unguarded)
    assert shape(result)[-3:] == [("tool", "nothing new"), ("ai", "found it"), ("ai", "the report")]

    events = await session_events(
        stack, "s-lg-team", lambda es: any(e["kind"] == "session.ended" for e in es)
    )
    steps = [
        (e["kind"], e["agent_id"]) for e in events if e["kind"] not in ("session.started", "session.ended")
    ]
    assert steps == [
        ("message.sent", "user"),  # the run's input: a user's message to the session's agent
        ("turn.started", "researcher"),
        ("turn.completed", "researcher"),
        ("tool.called", "researcher"),
        ("tool.returned", "researcher"),
        ("turn.started", "researcher"),
        ("turn.completed", "researcher"),
        ("turn.started", "writer"),
        ("turn.completed", "writer"),
    ]
    (asked,) = [e for e in events if e["kind"] == "message.sent"]
    assert (asked["to_agent_id"], asked["content_digest"]) == ("team", digest(inputs))
    turns = [e for e in events if e["kind"] == "turn.completed"]
    assert [(t["gen_ai.usage.input_tokens"], t["gen_ai.usage.output_tokens"]) for t in turns] == [
        (50, 7),
        (80, 3),
        (90, 4),
    ]
    assert [t["context_tokens"] for t in turns] == [50, 80, 90]
    (returned,) = [e for e in events if e["kind"] == "tool.returned"]
    assert (returned["gen_ai.tool.name"], returned["status"]) == ("search", "ok")


@pytest.mark.parametrize("method", ["invoke", "stream"])
async def test_a_sync_runaway_graph_is_stopped_at_the_kill(stack: LocalStack, method: str) -> None:
    model, searches = RunawayModel(), Searches()
    graph = react_graph(model, [searches.tool(sync=True)], sync=True, retry=RETRY_ALL)
    end = RunEnd()
    config: RunnableConfig = {"recursion_limit": RUNAWAY_STEPS, "callbacks": [end]}
    sid = f"s-lg-sync-{method}"

    def app() -> tuple[SessionKilled, dict[str, int]]:
        """A sync program: no event loop of its own, the guard's runs on its own thread."""
        with sync_session(stack, sid, agent_id="a1") as session:
            at_kill = counting_at_kill(session, model, searches)
            guarded = guard_graph(graph, session)
            inputs = {"messages": [("user", "find it")]}

            def run() -> None:
                if method == "invoke":
                    guarded.invoke(inputs, config)
                else:
                    for _ in guarded.stream(inputs, config, stream_mode="updates"):
                        pass

            with pytest.raises(SessionKilled) as killed:
                run()
            calls = model.calls
            with pytest.raises(SessionKilled):
                guarded.invoke(inputs, config)
            assert model.calls == calls  # once killed, the graph is refused without running
            return killed.value, at_kill

    killed, at_kill = await asyncio.to_thread(app)
    assert killed.command.detector == "max_steps"
    assert at_kill, "the run ended without the kill having been received"
    assert (model.calls - at_kill["model"], searches.runs - at_kill["tool"]) == (0, 0)
    assert model.errors_seen == 0
    await check_acknowledged_after_the_run(stack, sid, killed.command.command_id, end.ended_ms)


async def test_the_budget_gate_refuses_the_step_past_the_budget_before_it_runs(stack: LocalStack) -> None:
    await gate_limits_published(stack)
    model, searches = RunawayModel(), Searches()
    graph = react_graph(model, [searches.tool(sync=False)], retry=RETRY_ALL)
    async with (
        stack.guard(budget_gate=True) as guard,
        guard.session("s-lg-budget", agent_id="a1", tenant_id="t", user_id="u") as session,
    ):
        with pytest.raises(BudgetExhausted) as refused:
            await guard_graph(graph, session).ainvoke(
                {"messages": [("user", "find it")]}, {"recursion_limit": RUNAWAY_STEPS}
            )
        # No kill was needed: the sixth step (a tool call) was refused before it ran, and the run ended.
        assert not session.killed
    assert refused.value.limit == "session_budget.max_steps"
    assert (model.calls, searches.runs) == (3, 2)
    assert model.errors_seen == 0
