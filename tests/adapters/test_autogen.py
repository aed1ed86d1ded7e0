"""The AutoGen adapter with real AutoGen AgentChat and a fake model, against a real worker.

The module starts one worker with private topics and `max_steps=5`; each test uses sessions of its own. The
fake model answers every call with the same tool call, so an agent left alone would never stop. Nothing waits
on a sleep: every wait is for a condition with a deadline, and a run that does not end within it fails the
test rather than hanging it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import orjson
import pytest

pytest.importorskip(
    "autogen_agentchat", reason="AutoGen is an extra: pip install 'tripwire-guardrail[autogen]'"
)

from autogen_agentchat.agents import AssistantAgent, UserProxyAgent
from autogen_agentchat.base import ChatAgent, TaskResult, TaskRunner, Team
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import FunctionTool, Tool, ToolSchema
from pydantic import BaseModel

from agents_contract import BudgetExhausted, GuardedSession, SessionKilled, digest
from agents_contract.adapters.autogen import AutoGenGuard
from streams.lab._stack import LocalStack
from tests.adapters.harness import DEADLINE_S, gate_limits_published, session_events

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")
Reply = str | list[FunctionCall]


async def ends(work: Awaitable[T]) -> T:
    """`work`'s result, or a failure once the deadline passes: a cancel would not help a hung AutoGen run
    (its `run_stream` waits for its runtime in a `finally`), so the task is left and the test fails."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=DEADLINE_S)
    if not done:
        pytest.fail(f"the AutoGen run did not end within {DEADLINE_S:g}s: it hangs")
    return task.result()


class FakeModel(ChatCompletionClient):
    """A model that answers from `script` (by call number; the last reply forever after), counting calls
    and keeping every prompt it was sent; from call `hang_from` on it hangs (a kill must interrupt it).
    Usage is 10 prompt and 5 completion tokens per call."""

    def __init__(self, *script: Reply, hang_from: int | None = None) -> None:
        self.script = script or (_search_call(),)
        self.calls = 0
        self.hang_from = hang_from
        self.finished_hanging = False
        self.prompts: list[Sequence[LLMMessage]] = []
        self._ids = itertools.count()

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},  # the base class's signature
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        reply = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.prompts.append(list(messages))
        if self.hang_from is not None and self.calls >= self.hang_from:
            await asyncio.sleep(DEADLINE_S * 2)
            self.finished_hanging = True
        await asyncio.sleep(0.001)  # a model takes time; an instant one could outrun any kill
        if not isinstance(reply, str):
            reply = [FunctionCall(f"call-{next(self._ids)}", c.arguments, c.name) for c in reply]
        return CreateResult(
            finish_reason="stop" if isinstance(reply, str) else "function_calls",
            content=reply,
            usage=RequestUsage(prompt_tokens=10, completion_tokens=5),
            cached=False,
        )

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        result = await self.create(messages, tools=tools)
        if isinstance(result.content, str):
            for word in result.content.split(" "):
                yield word + " "
        yield result

    async def close(self) -> None:
        pass

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=10, completion_tokens=5)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=10 * self.calls, completion_tokens=5 * self.calls)

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return 10

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return 100_000

    @property
    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(vision=False, function_calling=True, json_output=False)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False, function_calling=True, json_output=False, family="fake-1", structured_output=False
        )


def _search_call(q: str = "same") -> list[FunctionCall]:
    return [FunctionCall("", orjson.dumps({"q": q}).decode(), "search")]


class Search:
    """The `search` tool, counting runs; from run `hang_from` on it hangs (a kill must interrupt it)."""

    def __init__(self, hang_from: int | None = None) -> None:
        self.runs = 0
        self.hang_from = hang_from
        self.finished_hanging = False

    async def search(self, q: str) -> str:
        """Search the web."""
        self.runs += 1
        if self.hang_from is not None and self.runs >= self.hang_from:
            await asyncio.sleep(DEADLINE_S * 2)
            self.finished_hanging = True
        await asyncio.sleep(0.002)  # a tool takes time
        return f"results for {q}"

    def tool(self) -> FunctionTool:
        return FunctionTool(self.search, name="search", description="Search the web.")


class Timed:
    """A TaskRunner that notes when the agent's or team's own run ended."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.ended_ms: float | None = None

    async def run(
        self,
        *,
        task: str | BaseChatMessage | Sequence[BaseChatMessage] | None = None,
        cancellation_token: CancellationToken | None = None,
        output_task_messages: bool = True,
    ) -> TaskResult:
        try:
            return await self.runner.run(
                task=task, cancellation_token=cancellation_token, output_task_messages=output_task_messages
            )
        finally:
            self.ended_ms = time.time() * 1000

    def run_stream(
        self,
        *,
        task: str | BaseChatMessage | Sequence[BaseChatMessage] | None = None,
        cancellation_token: CancellationToken | None = None,
        output_task_messages: bool = True,
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | TaskResult, None]:
        raise NotImplementedError


def runaway(shape: str, tripwire: AutoGenGuard, model: FakeModel, search: Search) -> TaskRunner:
    """An agent (or a team of two) that calls `search` after every model call, without end."""
    if shape == "agent":
        return AssistantAgent(
            "writer",
            tripwire.model_client(model, "writer"),
            workbench=tripwire.workbench([search.tool()], "writer"),
            max_tool_iterations=10_000,  # a bound: a broken kill path fails, not loops for ever
        )
    agents: list[ChatAgent | Team] = [
        AssistantAgent(
            name, tripwire.model_client(model, name), workbench=tripwire.workbench([search.tool()], name)
        )
        for name in ("writer", "critic")
    ]
    return RoundRobinGroupChat(agents, termination_condition=tripwire.termination, max_turns=10_000)


def counts_at_kill(session: GuardedSession, model: FakeModel, search: Search) -> list[tuple[int, int]]:
    """Filled with (model calls, tool runs) at the moment the session receives its kill."""
    marks: list[tuple[int, int]] = []
    session.on_kill(lambda _: marks.append((model.calls, search.runs)))
    return marks


@pytest.mark.parametrize("shape", ["agent", "team"])
async def test_a_kill_stops_a_runaway_with_no_model_or_tool_call_after_it(
    stack: LocalStack, shape: str
) -> None:
    stopped: dict[str, tuple[str, float]] = {}  # session -> (kill command, when the AutoGen run ended)
    async with stack.guard() as guard:
        # Several runs, the kill landing at a different point of AutoGen's loop in each: anywhere, while a
        # tool call hangs, or while a model call hangs. Steps alternate model, tool, ...: the sixth, which
        # breaches max_steps=5, is the third tool call, and the fourth model call follows it.
        for run, hangs in enumerate(["nothing", "tool", "model"] * 2):
            model = FakeModel(hang_from=4 if hangs == "model" else None)
            search = Search(hang_from=3 if hangs == "tool" else None)
            session_id = f"s-{shape}-{run}"
            async with guard.session(session_id, agent_id="team", tenant_id="t", user_id="u") as session:
                tripwire = AutoGenGuard(session)
                at_kill = counts_at_kill(session, model, search)
                runner = Timed(runaway(shape, tripwire, model, search))

                with pytest.raises(SessionKilled) as killed:
                    await ends(tripwire.run(runner, "Find everything about haiku."))

                assert killed.value.command.detector == "max_steps"
                # Not one model call or tool run began after the kill was received.
                assert at_kill == [(model.calls, search.runs)]
                assert (search.finished_hanging, model.finished_hanging) == (False, False)
                # The model never saw the refusal, and the caller's SessionKilled is chained to what
                # AutoGen raised (or to nothing, when the team ended on its termination condition).
                assert not any("Tripwire" in str(prompt) for prompt in model.prompts)
                assert killed.value.__cause__ is None or isinstance(killed.value.__cause__, RuntimeError)
                assert runner.ended_ms is not None
                stopped[session_id] = (killed.value.command.command_id, runner.ended_ms)

    def all_acked(events: list[dict[str, Any]]) -> bool:
        return {e["session_id"] for e in events if e.get("outcome") == "stopped"} >= stopped.keys()

    events = await session_events(stack, None, all_acked)
    for session_id, (command_id, ended_ms) in stopped.items():
        acks = [e for e in events if e["kind"] == "control.ack" and e["session_id"] == session_id]
        assert [a["outcome"] for a in acks] == ["stopping", "stopped"]
        assert {a["command_id"] for a in acks} == {command_id}
        # `stopped` only once AutoGen's run had really ended.
        assert acks[1]["event_time_ms"] >= int(ended_ms)


async def test_a_kill_stops_the_team_before_a_participant_without_a_guarded_client_speaks(
    stack: LocalStack,
) -> None:
    asked = 0

    async def answer(prompt: str, cancellation_token: CancellationToken | None) -> str:
        nonlocal asked
        asked += 1
        return "Go on."

    # The kill lands while the writer's third search hangs; the user proxy would speak next.
    model, search = FakeModel(), Search(hang_from=3)
    async with (
        stack.guard() as guard,
        guard.session("s-proxy", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        tripwire = AutoGenGuard(session)
        asked_at_kill: list[int] = []
        session.on_kill(lambda _: asked_at_kill.append(asked))
        writer = AssistantAgent(
            "writer",
            tripwire.model_client(model, "writer"),
            workbench=tripwire.workbench([search.tool()], "writer"),
        )
        user = UserProxyAgent("user", input_func=answer)
        team = RoundRobinGroupChat(
            [writer, user], termination_condition=tripwire.termination, max_turns=1_000
        )
        with pytest.raises(SessionKilled) as killed:
            await ends(tripwire.run(team, "Find everything about haiku."))
    # The team ended on its termination condition, at the turn after the kill: the user was not asked again.
    assert asked_at_kill == [asked] == [2]
    assert killed.value.__cause__ is None


def healthy_team(
    tripwire: AutoGenGuard | None, writer_model: FakeModel, critic_model: FakeModel
) -> TaskRunner:
    """A writer that searches once and a critic (a streaming client) that ends the task."""

    def client(model: FakeModel, name: str) -> ChatCompletionClient:
        return model if tripwire is None else tripwire.model_client(model, name)

    tools = [Search().tool()]
    writer = AssistantAgent(
        "writer",
        client(writer_model, "writer"),
        **({"tools": tools} if tripwire is None else {"workbench": tripwire.workbench(tools, "writer")}),
    )
    critic = AssistantAgent("critic", client(critic_model, "critic"), model_client_stream=True)
    stop = TextMentionTermination("TERMINATE") | MaxMessageTermination(20)
    return RoundRobinGroupChat(
        [writer, critic], termination_condition=stop if tripwire is None else stop | tripwire.termination
    )


def _scripts() -> tuple[FakeModel, FakeModel]:
    return FakeModel(_search_call("haiku"), "A haiku."), FakeModel("Good. TERMINATE")


def _shape(result: TaskResult) -> list[tuple[str, str, str, Any]]:
    return [(type(m).__name__, m.source, m.to_text(), m.models_usage) for m in result.messages]


async def test_a_healthy_team_run_returns_its_result_untouched_and_reports_its_calls(
    stack: LocalStack,
) -> None:
    plain = await ends(healthy_team(None, *_scripts()).run(task="Write a haiku."))

    async with (
        stack.guard() as guard,
        guard.session("s-healthy", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        tripwire = AutoGenGuard(session)
        writer_model, critic_model = _scripts()
        result = await ends(
            tripwire.run(healthy_team(tripwire, writer_model, critic_model), "Write a haiku.")
        )

    assert _shape(result) == _shape(plain)
    assert result.stop_reason == plain.stop_reason
    assert (writer_model.calls, critic_model.calls) == (1, 1)

    def ended(events: list[dict[str, Any]]) -> bool:
        return any(e["kind"] == "session.ended" and e["session_id"] == "s-healthy" for e in events)

    events = [e for e in await session_events(stack, None, ended) if e["session_id"] == "s-healthy"]
    steps = [
        (e["kind"], e["agent_id"]) for e in events if e["kind"] not in ("session.started", "session.ended")
    ]
    assert steps == [
        ("message.sent", "user"),  # the task: a user's message to the team
        ("turn.started", "writer"),
        ("turn.completed", "writer"),
        ("tool.called", "writer"),
        ("tool.returned", "writer"),
        ("turn.started", "critic"),
        ("turn.completed", "critic"),
    ]
    (asked,) = (e for e in events if e["kind"] == "message.sent")
    assert (asked["to_agent_id"], asked["content_digest"]) == ("team", digest("Write a haiku."))
    turns = [e for e in events if e["kind"] == "turn.completed"]
    assert {
        (t["gen_ai.usage.input_tokens"], t["gen_ai.usage.output_tokens"], t["context_tokens"]) for t in turns
    } == {(10, 5, 10)}
    assert {t["gen_ai.request.model"] for t in turns} == {"fake-1"}
    (returned,) = (e for e in events if e["kind"] == "tool.returned")
    assert (returned["gen_ai.tool.name"], returned["status"]) == ("search", "ok")
    assert returned["result_digest"] == digest("results for haiku")  # the text the model was given


@pytest.mark.parametrize("refused", ["tool", "model"])
async def test_a_budget_gate_refusal_ends_the_team_without_a_kill(stack: LocalStack, refused: str) -> None:
    await gate_limits_published(stack)
    # Steps alternate model, tool: the sixth is a tool call, unless the third model call answers in text.
    script = (
        (_search_call(),)
        if refused == "tool"
        else (_search_call(), _search_call(), "Thinking.", _search_call())
    )
    model, search = FakeModel(*script), Search()
    async with (
        stack.guard(budget_gate=True) as guard,
        guard.session(f"s-budget-{refused}", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        tripwire = AutoGenGuard(session)
        with pytest.raises(BudgetExhausted) as stop:
            await ends(tripwire.run(runaway("team", tripwire, model, search), "Find everything."))
        # No kill was needed: the gate refused the sixth step before it ran, and AutoGen ended the team.
        assert not session.killed
    assert stop.value.limit == "session_budget.max_steps"
    assert model.calls + search.runs == 5
    assert not any("Tripwire" in str(prompt) for prompt in model.prompts)
    if refused == "tool":
        # Refused, the tool call returned an error result; the team stopped on its termination condition.
        assert stop.value.__cause__ is None
    else:
        # Refused, the model call raised: AutoGen's error termination ended the team.
        assert isinstance(stop.value.__cause__, RuntimeError)
        assert "StoppedByTripwire" in str(stop.value.__cause__)
