"""LangGraph adapter: run a compiled graph as a Tripwire session's guarded run. `guard_graph(graph, session)`
gives the graph back with `ainvoke`/`astream` (for a `GuardedSession`) or `invoke`/`stream` (for a
`SyncSession`); each run carries a LangChain callback handler with `raise_error=True` whose chat-model, LLM
and tool start callbacks are the session's pre-call gates (LangChain calls them before the model or tool runs
and lets what they raise end that call) and whose end callbacks report usage and results. On a kill the next
model or tool call is refused, the run's `RunControl` is asked to drain (LangGraph's own way to end a run at
the next superstep) and an async run's step in flight is cancelled; the caller gets `SessionKilled`, chained
to whatever LangGraph raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel
from langgraph.runtime import RunControl

from agents_contract import GuardedSession, KillCommand, ModelCall, SyncSession, ToolCall

__all__ = ["GuardedGraph", "guard_graph"]

log = logging.getLogger("tripwire.adapters.langgraph")

# A task's place in nested graphs, as LangGraph writes it in `langgraph_checkpoint_ns`:
# "node:task_id|subnode:task_id" (NS_SEP and NS_END in langgraph/_internal/_constants.py, private there).
_NS_SEP, _NS_END = "|", ":"
_Call = TypeVar("_Call", ModelCall, ToolCall)


def guard_graph(
    graph: Pregel[Any, Any, Any, Any],
    session: GuardedSession | SyncSession,
    *,
    agents: Mapping[str, str] | None = None,
) -> GuardedGraph:
    """Guard `graph`'s runs with `session`. `agents` maps node names to agent ids, for a team: a call is
    reported for the innermost node on its path that is named there (a subgraph's node name covers all of
    its inner nodes), else for the session's own agent."""
    return GuardedGraph(graph, session, agents=agents)


class GuardedGraph:
    """A compiled LangGraph graph whose runs are a session's guarded runs; `graph` is the graph itself."""

    def __init__(
        self,
        graph: Pregel[Any, Any, Any, Any],
        session: GuardedSession | SyncSession,
        *,
        agents: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(session, GuardedSession | SyncSession):
            raise TypeError(
                f"session must be a GuardedSession or a SyncSession, got {type(session).__name__}"
            )
        self.graph = graph
        self.session = session
        self._agents = dict(agents or {})
        self._lock = threading.Lock()
        self._controls: set[RunControl] = set()
        self._streaming: set[asyncio.Task[Any]] = set()  # astream consumers while inside a graph step
        self._cancelled: set[asyncio.Task[Any]] = set()
        session.on_kill(self._stop)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        session = self._async_session("ainvoke")
        with self._run(config, kwargs) as (run_config, control):
            session.check()  # before the coroutine exists: a refused session.run would leave it never awaited
            session.record_input(input)  # a user's message: the agent's answers to it are no monologue
            return await session.run(self.graph.ainvoke(input, run_config, control=control, **kwargs))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        session = self._async_session("astream")
        task = asyncio.current_task()
        assert task is not None
        with self._run(config, kwargs) as (run_config, control):
            session.record_input(input)
            async with session.running():
                # Pregel.astream is an async generator, typed as the iterator it returns.
                parts = cast(
                    AsyncGenerator[Any, None],
                    self.graph.astream(input, run_config, control=control, **kwargs),
                )
                try:
                    while True:
                        with self._cancellable(task):
                            try:
                                part = await anext(parts)
                            except StopAsyncIteration:
                                return
                        yield part
                finally:
                    await parts.aclose()

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        session = self._sync_session("invoke")
        # running(), not session.run(fn): the interrupt run() injects can land in a thread that the run is
        # starting (ToolNode starts a thread pool per step; CPython 3.11 gives a new thread its starter's id
        # until it runs), which then dies before it signals it started, and the run waits for it forever.
        # The gates and the drain stop the run; a call in flight in a sync run finishes first.
        session.record_input(input)
        with self._run(config, kwargs) as (run_config, control), session.running():
            return self.graph.invoke(input, run_config, control=control, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        session = self._sync_session("stream")
        session.record_input(input)
        with self._run(config, kwargs) as (run_config, control), session.running():
            yield from self.graph.stream(input, run_config, control=control, **kwargs)

    def _async_session(self, method: str) -> GuardedSession:
        if not isinstance(self.session, GuardedSession):
            raise TypeError(
                f"{method} needs a GuardedSession (AgentGuard); with a SyncSession use invoke/stream"
            )
        return self.session

    def _sync_session(self, method: str) -> SyncSession:
        if not isinstance(self.session, SyncSession):
            raise TypeError(
                f"{method} needs a SyncSession (SyncAgentGuard); with a GuardedSession use ainvoke/astream"
            )
        return self.session

    @contextlib.contextmanager
    def _run(
        self, config: RunnableConfig | None, kwargs: dict[str, Any]
    ) -> Iterator[tuple[RunnableConfig, RunControl]]:
        """One run's gate and drain control (the caller's own `control=`, if it passed one)."""
        control: RunControl = kwargs.pop("control", None) or RunControl()
        inner = self.session.session if isinstance(self.session, SyncSession) else self.session
        gate = _Gate(inner, self._agents)
        with self._lock:
            self._controls.add(control)
        try:
            yield _with_handler(config, gate), control
        except BaseException as exc:
            gate.abandon(exc)
            raise
        else:
            gate.abandon("abandoned")
        finally:
            with self._lock:
                self._controls.discard(control)

    @contextlib.contextmanager
    def _cancellable(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """While an astream consumer is inside a graph step, a kill cancels it there, as `session.run` would
        cancel its task; the cancellation is taken back on the way out so the consumer's task is not left
        cancelling, and `running()` turns it into `SessionKilled`."""
        self._streaming.add(task)
        try:
            yield
        finally:
            self._streaming.discard(task)
            if task in self._cancelled:
                self._cancelled.discard(task)
                task.uncancel()

    def _stop(self, command: KillCommand) -> None:
        """The session's on_kill: drain every run of this graph, cancel the astream steps in flight."""
        reason = f"tripwire kill {command.command_id}"
        with self._lock:
            controls = list(self._controls)
        for control in controls:
            control.request_drain(reason)
        for task in list(self._streaming):
            if task not in self._cancelled and task.cancel(reason):
                self._cancelled.add(task)


def _with_handler(config: RunnableConfig | None, gate: _Gate) -> RunnableConfig:
    """The caller's config with the gate first among its callbacks, so that a refused start is never seen
    by the handlers after it (sync callbacks run in order: langchain_core/callbacks/manager.py)."""
    merged = RunnableConfig(**(config or {}))
    callbacks = merged.get("callbacks")
    if callbacks is None:
        merged["callbacks"] = [gate]
    elif isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.handlers.insert(0, gate)
        manager.inheritable_handlers.insert(0, gate)
        merged["callbacks"] = manager
    else:
        merged["callbacks"] = [gate, *callbacks]
    return merged


class _Gate(BaseCallbackHandler):
    """The session's gates and reports as LangChain callbacks, for one run of a graph.

    A start callback passes the gate or raises (`SessionKilled`, `BudgetExhausted`, `ToolCircuitOpen`);
    LangChain calls it before the model or tool body and outside the body's error handling (BaseChatModel
    .generate/.agenerate and BaseTool.run/.arun), and re-raises it because of `raise_error`. The first two are
    BaseExceptions, so neither ToolNode's error handling nor a RetryPolicy (both `except Exception`) treats
    them as a tool error to show the model or retry. The handler is sync and not `run_inline`: in an async
    run LangChain calls it in a thread, where the gate blocks on the guard's loop (`*_started_sync`).
    """

    raise_error = True
    run_inline = False

    def __init__(self, session: GuardedSession, agents: Mapping[str, str]) -> None:
        self._session = session
        self._agents = agents
        self._models: dict[UUID, ModelCall] = {}
        self._tools: dict[UUID, ToolCall] = {}

    @property
    def ignore_chain(self) -> bool:
        return True  # nodes and chains spend nothing; skipping them saves a thread hop each in async runs

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_started(run_id, serialized, metadata or {}, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_started(run_id, serialized, metadata or {}, kwargs)

    def _model_started(
        self,
        run_id: UUID,
        serialized: dict[str, Any] | None,
        metadata: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> None:
        params = kwargs.get("invocation_params") or {}
        model = str(
            metadata.get("ls_model_name")
            or params.get("model")
            or params.get("model_name")
            or (serialized or {}).get("name")
            or params.get("_type")
            or "unknown"
        )
        call = self._session.model_started_sync(model, agent_id=self._agent_of(metadata))
        self._models[run_id] = self._admitted(call)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        if (call := self._models.pop(run_id, None)) is not None:
            self._report(call.completed, **_usage(response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if (call := self._models.pop(run_id, None)) is not None:
            self._report(call.failed, error)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = str((serialized or {}).get("name") or kwargs.get("name") or "tool")
        args = input_str if inputs is None else inputs
        call = self._session.tool_started_sync(name, args, agent_id=self._agent_of(metadata or {}))
        self._tools[run_id] = self._admitted(call)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if (call := self._tools.pop(run_id, None)) is None:
            return
        if isinstance(output, ToolMessage):
            # An error the tool handled itself (its handle_tool_error) is a ToolMessage with status error.
            if output.status == "error":
                self._report(call.failed, "ToolError")
            else:
                self._report(call.returned, output.content)
        else:
            self._report(call.returned, output)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if (call := self._tools.pop(run_id, None)) is not None:
            self._report(call.failed, error)

    def abandon(self, error: BaseException | str) -> None:
        """End the calls the run left without an end callback (cancelled by a kill, say) as failed."""
        for model_run in list(self._models):
            if (model := self._models.pop(model_run, None)) is not None:
                self._report(model.failed, error)
        for tool_run in list(self._tools):
            if (tool := self._tools.pop(tool_run, None)) is not None:
                self._report(tool.failed, error)

    def _admitted(self, call: _Call) -> _Call:
        """The gate answered on the guard's loop; a kill that arrived there while this thread was waking up to
        the answer refuses the call still, here in the thread that is about to run it."""
        if (stop := self._session.stop_error()) is not None:
            call.failed(stop)
            raise stop
        return call

    def _agent_of(self, metadata: Mapping[str, Any]) -> str | None:
        if not self._agents:
            return None
        path = str(metadata.get("langgraph_checkpoint_ns") or metadata.get("langgraph_node") or "")
        for part in reversed(path.split(_NS_SEP)):
            if (agent := self._agents.get(part.split(_NS_END, 1)[0])) is not None:
                return agent
        return None

    @staticmethod
    def _report(end: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        # An end callback that raised would fail the model or tool call it reports (raise_error): a report
        # the SDK refuses (a provider's odd usage counts, say) is logged instead.
        try:
            end(*args, **kwargs)
        except Exception:
            log.exception("could not report the end of a model or tool call")


def _usage(response: LLMResult) -> dict[str, Any]:
    """Token usage from the first generation's message (`usage_metadata`), and its output for the loop
    detector: the text and the tool calls asked for, without their ids, which differ on every call."""
    generation = next((g for batch in response.generations for g in batch), None)
    if generation is None:
        return {}
    if not isinstance(generation, ChatGeneration) or not isinstance(generation.message, AIMessage):
        return {"output": generation.text}
    message = generation.message
    usage: Mapping[str, Any] = message.usage_metadata or {}
    input_tokens = int(usage.get("input_tokens") or 0)
    calls = [{"name": call["name"], "args": call["args"]} for call in message.tool_calls]
    return {
        "input_tokens": input_tokens,
        "output_tokens": int(usage.get("output_tokens") or 0),
        "context_tokens": input_tokens,
        "output": {"content": message.content, "tool_calls": calls} if calls else message.content,
    }
