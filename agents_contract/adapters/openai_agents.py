"""OpenAI Agents SDK adapter: `await guarded_run(session, agent, input)` in place of `Runner.run`, or
`guarded_run_sync(sync_session, agent, input)` in place of `Runner.run_sync`. The run carries `RunHooks` whose
`on_llm_start` and `on_tool_start` are the session's pre-call gates (the Agents SDK awaits them right before
the model or the tool is called, and what they raise, a `TripwireStop` being a BaseException, passes every
`except Exception` of the runner and its tool failure handler, so it ends the run: never retried, never
turned into a tool message for the model), and whose `on_llm_end` / `on_tool_end` report usage and results.
A kill ends the run by the runner's own cancellation path: the guarded run's task is cancelled (`session.run`)
or, under `run_sync`, the task making the current model call, found with `RunConfig.call_model_input_filter`,
is cancelled on run_sync's own loop. The caller gets `SessionKilled`, chained to whatever the runner raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from agents import (
    Agent,
    FunctionTool,
    ModelResponse,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    RunResult,
    Tool,
    TResponseInputItem,
    Usage,
    UserError,
)
from agents.models import get_default_model
from agents.run_config import CallModelData, CallModelInputFilter, ModelInputData
from agents.run_context import AgentHookContext
from agents.tool_context import ToolContext

from agents_contract import (
    GuardedSession,
    KillCommand,
    ModelCall,
    SyncSession,
    ToolCall,
    ToolCircuitOpen,
    agent_id_for,
)

__all__ = ["guarded_run", "guarded_run_sync"]

CostUsd = Callable[[str, Usage], float]
"""Prices one model call: `(model name, the call's usage) -> dollars`, for the session's cost budget."""


async def guarded_run(
    session: GuardedSession,
    agent: Agent[Any],
    input: str | list[TResponseInputItem],
    /,
    *,
    agents: Mapping[str, str] | None = None,
    cost_usd: CostUsd | None = None,
    hooks: RunHooks[Any] | None = None,
    run_config: RunConfig | None = None,
    **kwargs: Any,
) -> RunResult:
    """`Runner.run(agent, input, **kwargs)` as the session's guarded run. `agents` maps agent names to
    agent ids (by default an agent's name is its id); `cost_usd` prices each model call; `hooks` are the
    caller's own run hooks, called after Tripwire's. Raises `SessionKilled` or `BudgetExhausted` when Tripwire
    stopped the run, `ToolCircuitOpen` when a tool it switched off was called."""
    if not isinstance(session, GuardedSession):
        raise TypeError(
            f"guarded_run needs a GuardedSession (for a SyncSession: guarded_run_sync), got {session!r}"
        )
    gates = _RunGates(session, agents=agents, cost_usd=cost_usd, hooks=hooks, run_config=run_config)

    async def run() -> RunResult:
        _RUN_SESSION.set(session)  # this task's own context: the runner's tool tasks copy it
        try:
            return await Runner.run(agent, input, hooks=gates, run_config=run_config, **kwargs)
        except BaseException as exc:
            gates.abandon(exc)
            raise
        finally:
            gates.close_open_calls()

    session.record_input(input)  # a user's message: the agent's answers to it are no monologue
    with _circuit_errors():
        return await session.run(run())


def guarded_run_sync(
    session: SyncSession,
    agent: Agent[Any],
    input: str | list[TResponseInputItem],
    /,
    *,
    agents: Mapping[str, str] | None = None,
    cost_usd: CostUsd | None = None,
    hooks: RunHooks[Any] | None = None,
    run_config: RunConfig | None = None,
    **kwargs: Any,
) -> RunResult:
    """`Runner.run_sync(agent, input, **kwargs)` as the sync session's guarded run; the arguments and the
    exceptions are `guarded_run`'s."""
    if not isinstance(session, SyncSession):
        raise TypeError(
            f"guarded_run_sync needs a SyncSession (for a GuardedSession: guarded_run), got {session!r}"
        )
    gates = _RunGates(session, agents=agents, cost_usd=cost_usd, hooks=hooks, run_config=run_config)
    config = gates.cancellable(run_config)
    # Not `session.run`: the interrupt it injects does not wake a thread waiting in its loop's select (a hung
    # tool), and one landing in a loop callback is logged and dropped (asyncio's Handle._run). Cancelling the
    # turn's task on its own loop (call_soon_threadsafe wakes it) is neither.
    session.record_input(input)
    with _circuit_errors(), session.running():
        session.on_kill(gates.cancel_turn)
        token = _RUN_SESSION.set(session)
        try:
            return Runner.run_sync(agent, input, hooks=gates, run_config=config, **kwargs)
        except BaseException as exc:
            gates.abandon(exc)
            raise
        finally:
            _RUN_SESSION.reset(token)
            gates.finish()
            gates.close_open_calls()


# The session of the guarded run this code runs in: the runner starts each tool body in a task of its own,
# created from (and so copying the context of) the run, one loop pass after the tool-start hook passed the
# gate. A kill received in that pass must still stop the body before it starts.
_RUN_SESSION: contextvars.ContextVar[GuardedSession | SyncSession | None] = contextvars.ContextVar(
    "tripwire_openai_agents_session", default=None
)
_GUARDED_BODY = "_tripwire_guarded_body"


def _guard_body(tool: FunctionTool) -> None:
    """Wrap the tool's invoke function once: in a guarded run, a killed session's tool body never starts.
    Outside one (the same tool used unguarded) the wrapper only calls through."""
    if getattr(tool.on_invoke_tool, _GUARDED_BODY, False):
        return
    invoke = tool.on_invoke_tool

    async def guarded(context: ToolContext[Any], arguments: str) -> Any:
        session = _RUN_SESSION.get()
        if session is not None:
            session.check()
        return await invoke(context, arguments)

    setattr(guarded, _GUARDED_BODY, True)
    tool.on_invoke_tool = guarded


@contextlib.contextmanager
def _circuit_errors() -> Iterator[None]:
    # The runner wraps what a tool-start hook raises in `UserError("Error running tool ...")`
    # (run_internal/tool_execution.py, _run_single_tool): give the caller Tripwire's own error back.
    try:
        yield
    except UserError as exc:
        cause = exc.__cause__
        if isinstance(cause, ToolCircuitOpen):
            raise ToolCircuitOpen(cause.tool, cause.until_ms) from exc
        raise


class _RunGates(RunHooks[Any]):
    """One run's hooks: the session's gates before each model and tool call, its reports after them."""

    def __init__(
        self,
        session: GuardedSession | SyncSession,
        *,
        agents: Mapping[str, str] | None,
        cost_usd: CostUsd | None,
        hooks: RunHooks[Any] | None,
        run_config: RunConfig | None,
    ) -> None:
        self._session = session
        self._agent_ids = dict(agents or {})
        self._cost_usd = cost_usd
        self._hooks = hooks
        self._run_model = run_config.model if run_config is not None else None
        # Open calls by the run context they belong to: a model call by its run's context wrapper (one at a
        # time per run), a tool call by its ToolContext (one per call) and tool object.
        self._models: dict[int, ModelCall] = {}
        self._tools: dict[tuple[int, int], list[ToolCall]] = {}
        self._last_output: dict[str, Any] = {}
        # run_sync only: the task making the current model call, cancelled from the guard's thread on a kill.
        self._lock = threading.Lock()
        self._turn: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self._finished = False

    # -- model calls ------------------------------------------------------------------------------------

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        agent_id = self._agent_id(agent)
        if isinstance(self._session, SyncSession):
            call = self._session.model_started(self._model_name(agent), agent_id=agent_id)
            self._recheck(call)
        else:
            call = await self._session.model_started(self._model_name(agent), agent_id=agent_id)
        self._models[id(context)] = call
        if self._hooks is not None:
            await self._hooks.on_llm_start(context, agent, system_prompt, input_items)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        call = self._models.pop(id(context), None)
        if call is not None:
            usage = response.usage
            output = [_content(item) for item in response.output]
            self._last_output[call.agent_id] = output
            call.completed(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=0.0 if self._cost_usd is None else self._cost_usd(call.model, usage),
                context_tokens=usage.input_tokens,
                output=output,
            )
        if self._hooks is not None:
            await self._hooks.on_llm_end(context, agent, response)

    # -- tool calls -------------------------------------------------------------------------------------

    async def on_tool_start(self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool) -> None:
        # A function tool gets a ToolContext with the call's arguments; computer and shell tools get the run's
        # context, without them.
        args = _arguments(context.tool_arguments) if isinstance(context, ToolContext) else None
        if isinstance(tool, FunctionTool):
            _guard_body(tool)
        agent_id = self._agent_id(agent)
        if isinstance(self._session, SyncSession):
            call = self._session.tool_started(tool.name, args, agent_id=agent_id)
            self._recheck(call)
        else:
            call = await self._session.tool_started(tool.name, args, agent_id=agent_id)
        self._tools.setdefault((id(context), id(tool)), []).append(call)
        if self._hooks is not None:
            await self._hooks.on_tool_start(context, agent, tool)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        key = (id(context), id(tool))
        calls = self._tools.get(key)
        if calls:
            # A tool that raised reaches here with the message its failure_error_function made for the model,
            # which is what the model sees, so it is reported as the tool's result.
            calls.pop(0).returned(result)
            if not calls:
                del self._tools[key]
        if self._hooks is not None:
            await self._hooks.on_tool_end(context, agent, tool, result)

    # -- the team ---------------------------------------------------------------------------------------

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        if isinstance(self._session, GuardedSession):
            sender = self._agent_id(from_agent)
            # What is handed over is the sender's last answer (the handoff call in it), so agents passing the
            # same thing back and forth show as the same message.
            content = self._last_output.get(sender)
            await self._session.send_message(self._agent_id(to_agent), content, agent_id=sender)
        if self._hooks is not None:
            await self._hooks.on_handoff(context, from_agent, to_agent)

    async def on_agent_start(self, context: AgentHookContext[Any], agent: Agent[Any]) -> None:
        if self._hooks is not None:
            await self._hooks.on_agent_start(context, agent)

    async def on_agent_end(self, context: AgentHookContext[Any], agent: Agent[Any], output: Any) -> None:
        if self._hooks is not None:
            await self._hooks.on_agent_end(context, agent, output)

    # -- the run's end ----------------------------------------------------------------------------------

    def abandon(self, error: BaseException) -> None:
        """The run ended with `error`: report the calls it left open as failed (stopped, when killed)."""
        reason = self._session.stop_error() or error
        for model_call in self._models.values():
            model_call.failed(reason)
        for tool_calls in self._tools.values():
            for tool_call in tool_calls:
                tool_call.failed(reason)
        self._models.clear()
        self._tools.clear()

    def close_open_calls(self) -> None:
        """Report as stopped the calls the runner started and never reported ended (a tool task cancelled
        under a kill, for one), before the run's end lets the kill be acknowledged `stopped`: every call
        reported started is reported ended first."""
        if self._models or self._tools:
            self.abandon(asyncio.CancelledError("the run ended before the call was reported ended"))

    def cancellable(self, run_config: RunConfig | None) -> RunConfig:
        """`run_config` with a model input filter that notes the task making each model call, which is the
        task awaiting that call and the turn's tool calls (run_internal/turn_preparation.py awaits the filter
        in it, just before the model); the caller's own filter still runs after."""
        config = run_config if run_config is not None else RunConfig()
        return dataclasses.replace(
            config, call_model_input_filter=self._note_turn(config.call_model_input_filter)
        )

    def _note_turn(self, user_filter: CallModelInputFilter | None) -> CallModelInputFilter:
        def note(data: CallModelData[Any]) -> ModelInputData | Awaitable[ModelInputData]:
            task = asyncio.current_task()
            if task is not None:
                with self._lock:
                    self._turn = (asyncio.get_running_loop(), task)
            return data.model_data if user_filter is None else user_filter(data)

        return note

    def cancel_turn(self, command: KillCommand) -> None:
        """On a kill (on the guard's thread): cancel the current model-calling task on run_sync's loop."""
        with self._lock:
            if self._turn is None or self._finished:
                return
            loop, task = self._turn
            loop.call_soon_threadsafe(task.cancel, f"tripwire kill {command.command_id}")

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._turn = None

    # -- helpers ----------------------------------------------------------------------------------------

    def _recheck(self, call: ModelCall | ToolCall) -> None:
        # A sync gate is passed on the guard's thread: a kill that came meanwhile stops the call here.
        stop = self._session.stop_error()
        if stop is not None:
            call.failed(stop)
            raise stop

    def _agent_id(self, agent: Agent[Any]) -> str:
        found = self._agent_ids.get(agent.name)
        if found is None:
            found = self._agent_ids[agent.name] = agent_id_for(agent.name) or "agent"
        return found

    def _model_name(self, agent: Agent[Any]) -> str:
        model = self._run_model if self._run_model is not None else agent.model
        if model is None:
            return get_default_model()
        if isinstance(model, str):
            return model
        name = getattr(model, "model", None)
        return name if isinstance(name, str) and name else type(model).__name__


def _arguments(raw: str) -> Any:
    """A tool call's arguments as JSON, so equal arguments digest equal however the model spaced them."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _content(item: Any) -> Any:
    """An output item without its ids, so the same answer twice digests the same (the no-progress check)."""
    if hasattr(item, "model_dump"):
        item = item.model_dump(mode="json", exclude_none=True)
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if k not in ("id", "call_id", "status")}
    return item
