"""CrewAI adapter: run a crew under a Tripwire session, so every model call and tool call of its agents is
gated and reported, and a kill ends the run through CrewAI's own deliberate-stop path.

`guarded_kickoff(session, crew, inputs)` (a `SyncSession`) and `await guarded_kickoff_async(session, crew,
inputs)` (a `GuardedSession`) register four execution-scoped CrewAI hooks for the length of the run: before
and after each model call, before and after each tool call. They are scoped by a context variable that CrewAI
copies into every thread it runs agents in, so they see this run only and leave no global registration
behind. A hook that finds the session stopped (killed, or refused by the budget gate) raises CrewAI's
`HookAborted`, which CrewAI propagates by design: the agent does not retry it, the model never sees it, and a
blocked tool does not run. The check after a model call and after a tool call means that an answer or a
result that arrived after the kill is dropped, not acted on. The whole kickoff is inside the session's guarded
run, so the SDK acknowledges a kill `stopped` only once CrewAI has returned, and the caller gets the
`TripwireStop` chained to what CrewAI raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from agents_contract import ToolCircuitOpen, TripwireStop

if TYPE_CHECKING:
    from crewai import Crew, CrewOutput
    from crewai.hooks import HookAborted, LLMCallHookContext, ToolCallHookContext

    from agents_contract import GuardedSession, ModelCall, SyncSession, ToolCall

__all__ = ["guarded_kickoff", "guarded_kickoff_async"]

_NOT_IN_ID = re.compile(r"[^A-Za-z0-9._:@/+=-]+")
_MAX_ID = 128
_HOOK_SOURCE = "tripwire"


def guarded_kickoff(
    session: SyncSession,
    crew: Crew,
    inputs: dict[str, Any] | None = None,
    *,
    agent_ids: Mapping[str, str] | None = None,
) -> CrewOutput:
    """Run `crew.kickoff(inputs)` under `session`: each agent's model and tool calls are gated and reported
    under its `agent_id` (`agent_ids[role]`, else the role made into an id). Raises `SessionKilled` on a kill
    and `BudgetExhausted` when the budget gate refuses a call, in both cases after the crew has stopped."""
    run = _CrewRun(session.stop_error, session.model_started, session.tool_started, agent_ids)
    _refuse_streaming(crew)
    with session.running(), run.hooks():
        try:
            output = crew.kickoff(inputs=inputs)
        except BaseException as exc:
            run.fail(exc)
        run.finish()
    return _crew_output(output)


async def guarded_kickoff_async(
    session: GuardedSession,
    crew: Crew,
    inputs: dict[str, Any] | None = None,
    *,
    agent_ids: Mapping[str, str] | None = None,
) -> CrewOutput:
    """`guarded_kickoff` for `crew.kickoff_async(inputs)`, which runs the crew in a thread. A cancellation
    of the caller (or a kill of an enclosing `session.run`) stops the crew at its next model or tool call and
    returns only once that thread has left CrewAI."""
    run = _CrewRun(session.stop_error, session.model_started_sync, session.tool_started_sync, agent_ids)
    _refuse_streaming(crew)
    async with session.running():
        with run.hooks():
            # The task copies this context, and CrewAI's thread copies the task's: the hooks go with them.
            kickoff = asyncio.ensure_future(crew.kickoff_async(inputs=inputs))
        try:
            output = await _until_done(kickoff, run)
        except BaseException as exc:
            run.fail(exc)
        run.finish()
    return _crew_output(output)


async def _until_done(kickoff: asyncio.Future[Any], run: _CrewRun) -> Any:
    """Await the crew; when cancelled, stop it and wait until its thread has ended before passing the
    cancellation on (a thread cannot be cancelled, and the caller must not hear of an end that has not
    happened)."""
    try:
        return await asyncio.shield(kickoff)
    except asyncio.CancelledError as cancelled:
        run.halt(cancelled)
        while not kickoff.done():
            try:
                await asyncio.wait({kickoff})
            except asyncio.CancelledError:
                continue
        if not kickoff.cancelled():
            kickoff.exception()  # retrieved: the cancellation below is what the caller hears
        raise


def _refuse_streaming(crew: Crew) -> None:
    if getattr(crew, "stream", False):
        raise ValueError(
            "guarded_kickoff does not run a crew with stream=True: CrewAI would run it while the caller "
            "iterates, after the guarded run has ended"
        )


def _crew_output(output: Any) -> CrewOutput:
    from crewai import CrewOutput

    if not isinstance(output, CrewOutput):
        raise TypeError(f"crew.kickoff returned {type(output).__name__}, not a CrewOutput")
    return output


@dataclass(slots=True)
class _OpenTurn:
    call: ModelCall
    agent: object
    llm: object
    # The LLM's lifetime token totals when the call started: CrewAI reports usage per LLM, not per call.
    tokens: tuple[int, int]


@dataclass(slots=True)
class _OpenTool:
    # Held so that its id, the key, is not reused while the call is open: CrewAI hands the after-hook the
    # same `tool_input` dict as the before-hook, the one thing the two contexts share.
    tool_input: object
    call: ToolCall | None
    unavailable: ToolCircuitOpen | None = None


class _CrewRun:
    """One guarded crew run: the hooks CrewAI calls around its model and tool calls, and what ended the run
    when it was Tripwire (a kill, a budget refusal, a cancellation, or a call the SDK could not report)."""

    def __init__(
        self,
        stop_error: Callable[[], TripwireStop | None],
        model_started: Callable[..., ModelCall],
        tool_started: Callable[..., ToolCall],
        agent_ids: Mapping[str, str] | None,
    ) -> None:
        self._stop_error = stop_error
        self._model_started = model_started
        self._tool_started = tool_started
        self._agent_ids = dict(agent_ids or {})
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._turns: dict[int, _OpenTurn] = {}
        self._tools: dict[int, _OpenTool] = {}
        self._halted: BaseException | None = None

    @contextmanager
    def hooks(self) -> Iterator[None]:
        from crewai.hooks.dispatch import InterceptionPoint, register_scoped, scoped_hooks

        with scoped_hooks():
            register_scoped(InterceptionPoint.PRE_MODEL_CALL, self._before_model)
            register_scoped(InterceptionPoint.POST_MODEL_CALL, self._after_model)
            register_scoped(InterceptionPoint.PRE_TOOL_CALL, self._before_tool)
            register_scoped(InterceptionPoint.POST_TOOL_CALL, self._after_tool)
            yield

    # -- stopping ---------------------------------------------------------------------------------------

    def halt(self, reason: BaseException) -> None:
        """End the run at its next model or tool call (the first reason wins)."""
        with self._lock:
            if self._halted is None:
                self._halted = reason

    def _stopped(self) -> BaseException | None:
        return self._stop_error() or self._halted

    def _abort(self, reason: BaseException | None = None) -> HookAborted:
        if reason is not None:
            self.halt(reason)
        from crewai.hooks import HookAborted

        stopped = self._stopped()
        return HookAborted(f"stopped by Tripwire: {stopped}", source=_HOOK_SOURCE)

    def fail(self, exc: BaseException) -> NoReturn:
        """CrewAI's kickoff raised `exc`: close the calls it left open, then raise what ended the run. That
        is the session's stop (a kill wins over the rest) chained to `exc` when Tripwire stopped it, else
        `exc` as it is."""
        self._close_open(exc)
        stop = self._stopped()
        if stop is None or stop is exc or not isinstance(exc, Exception):
            raise exc
        raise stop from exc

    def finish(self) -> None:
        """CrewAI's kickoff returned: close the calls it left open; raise the stop if Tripwire stopped the run
        and CrewAI finished anyway (a stop some CrewAI step absorbed)."""
        self._close_open(None)
        stop = self._stopped()
        if stop is not None:
            raise stop

    def _close_open(self, error: BaseException | None) -> None:
        # A model call answered with tool calls gets no after-hook; a stopped tool call may get none either.
        with self._lock:
            turns, self._turns = list(self._turns.values()), {}
            tools, self._tools = list(self._tools.values()), {}
        for turn in turns:
            if error is None:
                self._complete(turn, None)
            else:
                turn.call.failed(error)
        for tool in tools:
            if tool.call is not None:
                tool.call.failed(error or "the tool call did not return")

    # -- model calls ------------------------------------------------------------------------------------

    def _before_model(self, ctx: LLMCallHookContext) -> None:
        # The agent's previous call, if still open, was answered with tool calls: it has ended.
        self._end_turn(ctx.agent)
        if self._stopped() is not None:
            raise self._abort()
        refused: BaseException | None = None
        try:
            call = self._model_started(_model_name(ctx.llm), agent_id=self._agent_id(ctx.agent))
        except (TripwireStop, Exception) as exc:
            refused = exc
        if refused is not None:
            # Raised outside the handler, so that the abort does not carry the refusal as its context.
            raise self._abort(refused)
        with self._lock:
            self._turns[id(ctx.agent)] = _OpenTurn(call, ctx.agent, ctx.llm, _token_totals(ctx.llm))

    def _after_model(self, ctx: LLMCallHookContext) -> None:
        with self._lock:
            turn = self._turns.pop(id(ctx.agent), None)
        if turn is not None:
            self._complete(turn, ctx.response)
        if self._stopped() is not None:
            # The answer came back after the stop: it must not drive a tool or become the crew's output.
            raise self._abort()

    def _end_turn(self, agent: object) -> None:
        with self._lock:
            turn = self._turns.pop(id(agent), None)
        if turn is not None:
            self._complete(turn, None)

    def _complete(self, turn: _OpenTurn, output: str | None) -> None:
        before_in, before_out = turn.tokens
        now_in, now_out = _token_totals(turn.llm)
        input_tokens, output_tokens = max(0, now_in - before_in), max(0, now_out - before_out)
        turn.call.completed(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            # What the model was sent this call is its context.
            context_tokens=input_tokens,
            output=output,
        )

    # -- tool calls -------------------------------------------------------------------------------------

    def _before_tool(self, ctx: ToolCallHookContext) -> None:
        self._end_turn(ctx.agent)
        key, tool_input = id(ctx.tool_input), ctx.tool_input
        if self._stopped() is not None:
            self._open_tool(key, _OpenTool(tool_input, None))
            raise self._abort()
        refused: BaseException | None = None
        try:
            call = self._tool_started(ctx.tool_name, dict(ctx.tool_input), agent_id=self._agent_id(ctx.agent))
        except ToolCircuitOpen as exc:
            # An ordinary refusal: CrewAI blocks the call and the model is told the tool is unavailable.
            self._open_tool(key, _OpenTool(tool_input, None, exc))
            refused = exc
        except (TripwireStop, Exception) as exc:
            self._open_tool(key, _OpenTool(tool_input, None))
            self.halt(exc)
            refused = exc
        if refused is not None:
            raise self._abort()
        self._open_tool(key, _OpenTool(tool_input, call))

    def _after_tool(self, ctx: ToolCallHookContext) -> str | None:
        with self._lock:
            tool = self._tools.pop(id(ctx.tool_input), None)
        if tool is not None and tool.call is not None:
            raw = ctx.raw_tool_result
            tool.call.returned(ctx.tool_result if raw is None else raw)
        if False:
            raise self._abort()
        if tool is not None and tool.unavailable is not None:
            return (
                f"Tool {ctx.tool_name} is unavailable right now ({tool.unavailable}); do not call it again."
            )
        return None

    def _open_tool(self, key: int, tool: _OpenTool) -> None:
        with self._lock:
            self._tools[key] = tool

    def _agent_id(self, agent: object) -> str | None:
        role = getattr(agent, "role", None)
        if not isinstance(role, str):
            return None
        known = self._ids.get(role)
        if known is None:
            known = self._ids[role] = self._agent_ids.get(role) or _id_of_role(role)
        return known or None


def _id_of_role(role: str) -> str:
    """An agent role ("Senior Researcher") as an agent id ("Senior-Researcher"); "" for a role with no
    character an id may hold (the session's own agent id is used then)."""
    slug = _NOT_IN_ID.sub("-", role).strip("-")
    if len(slug) <= _MAX_ID:
        return slug
    tag = hashlib.sha256(role.encode(errors="replace")).hexdigest()[:16]
    return f"{slug[: _MAX_ID - 17]}-{tag}"


def _model_name(llm: object) -> str:
    model = llm if isinstance(llm, str) else getattr(llm, "model", None)
    return model if isinstance(model, str) and model else type(llm).__name__


def _token_totals(llm: object) -> tuple[int, int]:
    """The LLM's lifetime (prompt, completion) token counts; zeros for an LLM that does not count them."""
    summary = getattr(llm, "get_token_usage_summary", None)
    if not callable(summary):
        return 0, 0
    try:
        usage = summary()
    except Exception:
        return 0, 0
    prompt, completion = getattr(usage, "prompt_tokens", 0), getattr(usage, "completion_tokens", 0)
    return (prompt if isinstance(prompt, int) else 0), (completion if isinstance(completion, int) else 0)
