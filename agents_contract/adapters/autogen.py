"""AutoGen AgentChat adapter: guard an AssistantAgent, or a team of them (a group chat such as
RoundRobinGroupChat), through the extension points AutoGen gives every agent. `AutoGenGuard(session)` makes
the agents' model clients (`model_client(client, "writer")`: a `ChatCompletionClient` whose every `create`
and `create_stream` first passes the session's gate), their workbenches (`workbench(tools, "writer")`: a
`Workbench` whose every `call_tool` does), a termination condition for the team (`termination`: an
`ExternalTermination` that a kill sets), and runs the agent or team as the session's guarded run (`run`). A
kill ends the run on AutoGen's own paths: the call in flight is interrupted, the team stops at its next turn,
and a refused model call raises an ordinary exception, which is what AutoGen turns into a team's error
termination (the participant's container publishes `GroupChatError` and the manager ends the run; a
BaseException would end the team's runtime silently and leave the run waiting). A refused tool call returns an
error `ToolResult` instead of raising, because AutoGen 0.7's AssistantAgent waits forever for a batch of tool
calls in which one raised (`_execute_tool_calls` sends its end-of-batch marker only after all returned); no
model reads that result, since every later model call is refused. Nothing is cancelled (AutoGen's
`CancellationToken` leaves tool calls in that same wait). The caller gets `SessionKilled` (or
`BudgetExhausted`), chained to whatever AutoGen raised.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from autogen_agentchat.base import TaskResult, TaskRunner
from autogen_agentchat.conditions import ExternalTermination
from autogen_agentchat.messages import BaseChatMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import (
    BaseTool,
    FunctionTool,
    StaticWorkbench,
    TextResultContent,
    Tool,
    ToolResult,
    ToolSchema,
    Workbench,
)
from pydantic import BaseModel

from agents_contract import (
    GuardedSession,
    KillCommand,
    ModelCall,
    SessionKilled,
    ToolCircuitOpen,
    TripwireStop,
)

__all__ = ["AutoGenGuard", "StoppedByTripwire", "TripwireModelClient", "TripwireWorkbench"]

T = TypeVar("T")
_NO_ARGS: Mapping[str, Any] = MappingProxyType({})
_NOT_RUN = "Tool {name} was not run: Tripwire stopped this session."
# A tool that failed inside a workbench comes back as an error ToolResult: AutoGen keeps only its text.
_TOOL_ERROR = "ToolResult.is_error"


class StoppedByTripwire(RuntimeError):
    """What a refused model call raises inside AutoGen: an ordinary exception, because AutoGen's teams turn
    those (and only those) into their error termination. `AutoGenGuard.run` raises `stop` in its place."""

    def __init__(self, stop: TripwireStop) -> None:
        super().__init__(f"Tripwire stopped this call: {stop}")
        self.stop = stop


class AutoGenGuard:
    """One session's guard for AutoGen: the agents' model clients and workbenches, the team's termination
    condition and the guarded run. One run at a time.

    Add `termination` to a team's termination condition (`termination_condition=guard.termination | ...`):
    a kill then also stops the team between turns, before a participant without a guarded client (a
    UserProxyAgent, a custom agent) speaks.
    """

    def __init__(self, session: GuardedSession) -> None:
        if not isinstance(session, GuardedSession):
            raise TypeError(f"session must be a GuardedSession, got {type(session).__name__}")
        self.session = session
        self.termination = ExternalTermination()
        self._refusal: TripwireStop | None = None
        self._in_flight: set[asyncio.Future[Any]] = set()
        session.on_kill(self._on_kill)

    def model_client(
        self,
        client: ChatCompletionClient,
        agent_id: str | None = None,
        *,
        model: str | None = None,
        price: Callable[[RequestUsage], float] | None = None,
    ) -> TripwireModelClient:
        """`client` with every call gated and reported for `agent_id` (the agent's name; the session's own
        agent when None). `model` defaults to the client's model family; `price` gives a call's cost in USD
        from its usage."""
        return TripwireModelClient(client, self, agent_id, model=model, price=price)

    def workbench(
        self,
        tools: Workbench | Sequence[BaseTool[Any, Any] | Callable[..., Any]],
        agent_id: str | None = None,
    ) -> TripwireWorkbench:
        """A workbench over `tools` (a workbench, or the list an AssistantAgent takes as `tools=`) with every
        call gated and reported for `agent_id`; pass it as the agent's `workbench=`."""
        return TripwireWorkbench(tools, self, agent_id)

    async def run(
        self,
        runner: TaskRunner,
        task: str | BaseChatMessage | Sequence[BaseChatMessage] | None = None,
        *,
        cancellation_token: CancellationToken | None = None,
        output_task_messages: bool = True,
    ) -> TaskResult:
        """Run an agent or team on `task` as the session's guarded run and return its TaskResult as it is.
        A kill raises `SessionKilled` and a refusal by the budget gate `BudgetExhausted`, each chained to what
        AutoGen raised; the kill is acknowledged `stopped` only once AutoGen's run has ended."""
        if not self.session.killed:
            self._refusal = None
            await self.termination.reset()
        self.session.record_input(task)  # a user's message: the answers to it are no monologue
        try:
            async with self.session.running():
                result = await runner.run(
                    task=task,
                    cancellation_token=cancellation_token,
                    output_task_messages=output_task_messages,
                )
        except TripwireStop:
            raise
        except BaseException as exc:
            if self._refusal is None:
                raise
            raise copy.copy(self._refusal) from exc
        if self._refusal is not None:
            # The run ended on the termination condition after a refused call: the caller still must know.
            raise copy.copy(self._refusal)
        return result

    # -- for the model clients and workbenches ----------------------------------------------------------

    def _refused(self, stop: TripwireStop) -> StoppedByTripwire:
        if self._refusal is None:
            self._refusal = stop
        self.termination.set()
        return StoppedByTripwire(stop)

    async def _until_stopped(self, work: Awaitable[T]) -> T:
        """Await a model or tool call that a kill interrupts: the call is cancelled and `SessionKilled`
        raised."""
        future = asyncio.ensure_future(work)
        self._in_flight.add(future)
        if self.session.killed:
            future.cancel()
        try:
            return await future
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.session.kill is None or (current is not None and current.cancelling()):
                raise
            raise SessionKilled(self.session.kill) from None
        finally:
            self._in_flight.discard(future)

    def _on_kill(self, command: KillCommand) -> None:
        self.termination.set()
        for future in list(self._in_flight):
            loop = future.get_loop()
            try:
                here = asyncio.get_running_loop() is loop
            except RuntimeError:
                here = False
            # At once when on the call's loop, so that a call whose task has not started yet never starts.
            if here:
                future.cancel()
            else:
                loop.call_soon_threadsafe(future.cancel)


class TripwireModelClient(ChatCompletionClient):
    """A ChatCompletionClient whose calls pass the session's gate first and report their usage after;
    `client` is the wrapped client."""

    def __init__(
        self,
        client: ChatCompletionClient,
        guard: AutoGenGuard,
        agent_id: str | None = None,
        *,
        model: str | None = None,
        price: Callable[[RequestUsage], float] | None = None,
    ) -> None:
        self.client = client
        self._guard = guard
        self._agent_id = agent_id
        self._model = model or str(client.model_info["family"])
        self._price = price

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = _NO_ARGS,
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        call = await self._started()
        with self._failing(call):
            result = await self._guard._until_stopped(
                self.client.create(
                    messages,
                    tools=tools,
                    tool_choice=tool_choice,
                    json_output=json_output,
                    extra_create_args=extra_create_args,
                    cancellation_token=cancellation_token,
                )
            )
        self._completed(call, result)
        return result

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = _NO_ARGS,
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        call = await self._started()
        stream = self.client.create_stream(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        result: CreateResult | None = None
        try:
            with self._failing(call):
                while (chunk := await self._guard._until_stopped(_next(stream))) is not None:
                    if isinstance(chunk, CreateResult):
                        result = chunk
                    yield chunk
        finally:
            await stream.aclose()
        if result is None:
            call.failed("no CreateResult")
        else:
            self._completed(call, result)

    async def _started(self) -> ModelCall:
        try:
            return await self._guard.session.model_started(self._model, agent_id=self._agent_id)
        except TripwireStop as stop:
            raise self._guard._refused(stop) from stop

    @contextmanager
    def _failing(self, call: ModelCall) -> Iterator[None]:
        """Reports `call` failed by whatever its body raises; a refusal by Tripwire is raised as
        `StoppedByTripwire`, which AutoGen turns into the team's error termination."""
        try:
            yield
        except TripwireStop as stop:
            call.failed(stop)
            raise self._guard._refused(stop) from stop
        except BaseException as exc:
            call.failed(exc)
            raise

    def _completed(self, call: ModelCall, result: CreateResult) -> None:
        usage = result.usage
        call.completed(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cost_usd=0.0 if self._price is None else self._price(usage),
            # What the model was given is the context of this turn.
            context_tokens=usage.prompt_tokens,
            output=_output(result.content),
        )

    async def close(self) -> None:
        await self.client.close()

    def actual_usage(self) -> RequestUsage:
        return self.client.actual_usage()

    def total_usage(self) -> RequestUsage:
        return self.client.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return self.client.count_tokens(messages, tools=tools)

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return self.client.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # deprecated in AutoGen, but still abstract
        return self.client.capabilities

    @property
    def model_info(self) -> ModelInfo:
        return self.client.model_info


class TripwireWorkbench(Workbench):
    """A Workbench whose tool calls pass the session's gate first and report their result after; `workbench`
    is the wrapped one. A refused call is not run and returns an error result."""

    def __init__(
        self,
        tools: Workbench | Sequence[BaseTool[Any, Any] | Callable[..., Any]],
        guard: AutoGenGuard,
        agent_id: str | None = None,
    ) -> None:
        self.workbench = tools if isinstance(tools, Workbench) else StaticWorkbench([_tool(t) for t in tools])
        self._guard = guard
        self._agent_id = agent_id

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        # Nothing may be raised from here: AssistantAgent would wait forever for this call's batch to end.
        try:
            call = await self._guard.session.tool_started(
                name, dict(arguments or {}), agent_id=self._agent_id
            )
        except ToolCircuitOpen as exc:
            return _error(name, str(exc))
        except TripwireStop as stop:
            self._guard._refused(stop)
            return _error(name, _NOT_RUN.format(name=name))
        try:
            result = await self._guard._until_stopped(
                self.workbench.call_tool(name, arguments, cancellation_token, call_id)
            )
        except TripwireStop as stop:
            call.failed(stop)
            self._guard._refused(stop)
            return _error(name, _NOT_RUN.format(name=name))
        except BaseException as exc:
            call.failed(exc)
            raise
        if result.is_error:
            call.failed(_TOOL_ERROR)
        else:
            call.returned(result.to_text())
        return result

    async def list_tools(self) -> list[ToolSchema]:
        return await self.workbench.list_tools()

    async def start(self) -> None:
        await self.workbench.start()

    async def stop(self) -> None:
        await self.workbench.stop()

    async def reset(self) -> None:
        await self.workbench.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return await self.workbench.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.workbench.load_state(state)


async def _next(stream: AsyncIterator[T]) -> T | None:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


def _output(content: str | list[FunctionCall]) -> Any:
    # Without the call ids, which differ on every call: a model repeating itself gives one digest.
    if isinstance(content, str):
        return content
    return [{"name": c.name, "arguments": c.arguments} for c in content]


def _tool(tool: BaseTool[Any, Any] | Callable[..., Any]) -> BaseTool[Any, Any]:
    # As AssistantAgent turns its `tools=` into tools.
    return tool if isinstance(tool, BaseTool) else FunctionTool(tool, description=tool.__doc__ or "")


def _error(name: str, text: str) -> ToolResult:
    return ToolResult(name=name, result=[TextResultContent(content=text)], is_error=True)
