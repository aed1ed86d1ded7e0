"""CrewAI adapter: `guarded_kickoff(sync_session, crew, inputs)` in place of `crew.kickoff(inputs)`, or
`await guarded_kickoff_async(session, crew, inputs)` in place of `crew.kickoff_async(inputs)`. For the length
of the run it registers four execution-scoped CrewAI hooks (before and after each model call and each tool
call), scoped by the context variable that CrewAI copies into every thread it runs an agent in, so they see
this run only and leave no global registration behind. The before-hooks are the session's pre-call gates; the
after-hooks report usage and results. A hook that finds the session stopped (killed, refused by the budget
gate) raises CrewAI's `HookAborted`, its deliberate stop: the agent never retries it, a blocked tool does not
run, the model is never shown it, and an answer or a tool result that comes back after the kill is dropped
rather than acted on. The kickoff is the session's guarded run, so the kill is acknowledged `stopped` only
once CrewAI has returned, and the caller gets `SessionKilled` chained to the `HookAborted` CrewAI raised.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from agents_contract import ToolCircuitOpen, TripwireStop, agent_id_for

if TYPE_CHECKING:
    from crewai import Crew, CrewOutput
    from crewai.hooks import HookAborted, LLMCallHookContext, ToolCallHookContext

    from agents_contract import GuardedSession, ModelCall, SyncSession, ToolCall

__all__ = ["CostUsd", "guarded_kickoff", "guarded_kickoff_async"]

CostUsd = Callable[[str, int, int], float]
"""Prices one model call, `(model name, input tokens, output tokens) -> dollars`, for the session's cost
budget: CrewAI reports tokens, not dollars."""

_HOOK_SOURCE = "tripwire"


def guarded_kickoff(
    session: SyncSession,
    crew: Crew,
    inputs: dict[str, Any] | None = None,
    *,
    agents: Mapping[str, str] | None = None,
    cost_usd: CostUsd | None = None,
) -> CrewOutput:
    """`crew.kickoff(inputs)` as the session's guarded run. Each agent's model and tool calls are gated and
    reported under its `agent_id`: `agents[role]`, else the role with the characters an id cannot hold made
    `_`. `cost_usd` prices each model call. Raises `SessionKilled` on a kill and `BudgetExhausted` when the
    budget gate refuses a call, in both cases once the crew has stopped; the output is CrewAI's, unchanged."""
    run = _CrewRun(session.stop_error, session.model_started, session.tool_started, agents, cost_usd)
    _refuse_streaming(crew)
    session.record_input(inputs)  # the crew's inputs are its user's request
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
    agents: Mapping[str, str] | None = None,
    cost_usd: CostUsd | None = None,
) -> CrewOutput:
    """`guarded_kickoff` for `crew.kickoff_async(inputs)`, which runs the crew in a thread. A cancellation
    of the caller (or a kill of an enclosing `session.run`) stops the crew at its next model or tool call and
    returns only once that thread has left CrewAI."""
    run = _CrewRun(
        session.stop_error, session.model_started_sync, session.tool_started_sync, agents, cost_usd
    )
    _refuse_streaming(crew)
    session.record_input(inputs)
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
    agent: object  # held so that its id, the key, is not reused while the call is open
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
        agents: Mapping[str, str] | None,
        cost_usd: CostUsd | None,
    ) -> None:
        self._stop_error = stop_error
        self._model_started = model_started
        self._tool_started = tool_started
        self._agents = dict(agents or {})
        self._cost_usd = cost_usd
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._turns: dict[int, _OpenTurn] = {}
        self._tools: dict[int, _OpenTool] = {}
        self._halted: BaseException | None = None

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """The run's hooks, registered in the current context for as long as the block lasts."""
        from crewai.hooks import HookAborted
        from crewai.hooks.dispatch import InterceptionPoint, register_scoped, scoped_hooks

        def fail_closed(hook: Callable[[Any], object]) -> Callable[[Any], object]:
            def guarded_hook(ctx: Any) -> object:
                try:
                    return hook(ctx)
                except HookAborted:
                    raise
                except Exception as exc:
                    fault = exc
                # CrewAI swallows any other exception of a hook and carries on unguarded: end the run instead.
                raise self._abort(fault)

            return guarded_hook

        with scoped_hooks():
            register_scoped(InterceptionPoint.PRE_MODEL_CALL, fail_closed(self._before_model))
            register_scoped(InterceptionPoint.POST_MODEL_CALL, fail_closed(self._after_model))
            register_scoped(InterceptionPoint.PRE_TOOL_CALL, fail_closed(self._before_tool))
            register_scoped(InterceptionPoint.POST_TOOL_CALL, fail_closed(self._after_tool))
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
        """CrewAI's deliberate stop for this run, after halting it for `reason`."""
        if reason is not None:
            self.halt(reason)
        return _refusal(self._stopped())

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
        refused: TripwireStop | None = None
        try:
            call = self._model_started(_model_name(ctx.llm), agent_id=self._agent_id(ctx.agent))
        except TripwireStop as exc:
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
        cost, unpriced = 0.0, None
        if self._cost_usd is not None:
            try:
                cost = self._cost_usd(turn.call.model, input_tokens, output_tokens)
            except Exception as exc:
                unpriced = exc
        turn.call.completed(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            # What the model was sent this call is its context.
            context_tokens=input_tokens,
            output=output,
        )
        if unpriced is not None:
            # The hook ends the run with it: spend that cannot be priced would pass the cost budget unseen.
            raise unpriced

    # -- tool calls -------------------------------------------------------------------------------------

    def _before_tool(self, ctx: ToolCallHookContext) -> None:
        self._end_turn(ctx.agent)
        if self._stopped() is not None:
            raise self._abort()
        refused: TripwireStop | ToolCircuitOpen | None = None
        try:
            call = self._tool_started(ctx.tool_name, ctx.tool_input, agent_id=self._agent_id(ctx.agent))
        except ToolCircuitOpen as exc:
            # Not a stop: CrewAI blocks the call, and the after-hook tells the model the tool is switched off.
            self._open_tool(_OpenTool(ctx.tool_input, None, exc))
            refused = exc
        except TripwireStop as exc:
            self.halt(exc)
            refused = exc
        if refused is not None:
            raise _refusal(refused)
        self._open_tool(_OpenTool(ctx.tool_input, call))

    def _after_tool(self, ctx: ToolCallHookContext) -> str | None:
        with self._lock:
            tool = self._tools.pop(id(ctx.tool_input), None)
        if tool is not None and tool.call is not None:
            raw = ctx.raw_tool_result
            tool.call.returned(ctx.tool_result if raw is None else raw)
        if self._stopped() is not None:
            # The result came back after the stop (or the call was blocked by it): the model must not see it.
            raise self._abort()
        if tool is not None and tool.unavailable is not None:
            return f"Tool unavailable: {tool.unavailable}. It did not run."
        return None

    def _open_tool(self, tool: _OpenTool) -> None:
        with self._lock:
            self._tools[id(tool.tool_input)] = tool

    def _agent_id(self, agent: object) -> str | None:
        role = getattr(agent, "role", None)
        if not isinstance(role, str):
            return None
        known = self._ids.get(role)
        if known is None:
            known = self._ids[role] = self._agents.get(role) or _id_of_role(role)
        return known or None


def _refusal(why: BaseException | None) -> HookAborted:
    from crewai.hooks import HookAborted

    return HookAborted(f"refused by Tripwire: {type(why).__name__}: {why}", source=_HOOK_SOURCE)


def _id_of_role(role: str) -> str:
    """An agent role ("Senior Researcher") as an agent id ("Senior_Researcher"); "" for a role with no
    character an id may hold (the session's own agent id is used then)."""
    return agent_id_for(role)


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
