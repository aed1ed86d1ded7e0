"""The SDK for synchronous code: an `AgentGuard` on an event loop of its own, in a daemon thread.

Sync agents (LangGraph's `invoke`, `Runner.run_sync`, CrewAI's `kickoff`, plain scripts) need no event loop of
their own: `SyncAgentGuard` runs the async guard on its loop thread and every method hands work to it. The
guarantees are the async SDK's: construction needs no loop, kills arrive on the loop thread while the caller's
code runs, guarded calls are refused once killed. `SyncSession.run(fn)` is the guarded run: a kill injects an
interrupt into the thread running `fn` (it fires when that thread next executes Python code; a thread blocked
in C, in a socket read say, gets it when the call returns) and `run` raises `SessionKilled`. A sync tool call
running when the kill arrives outside a run is not interrupted: it is reported as still running, so the kill
is acknowledged `stopping` until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from agents_contract._commands import KillCommand
from agents_contract._events import ContextSource
from agents_contract._sdk import (
    AgentGuard,
    GuardedSession,
    ModelCall,
    SessionKilled,
    ToolCall,
    TripwireStop,
    TurnUsage,
    _Interrupt,
)

T = TypeVar("T")


class SyncAgentGuard:
    """`AgentGuard` for code without an event loop; takes the same arguments. Use it as a context manager
    (or `start()`/`close()`)."""

    def __init__(self, **kwargs: Any) -> None:
        self.guard = AgentGuard(**kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="tripwire-sync-guard", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.call(self.guard.start(), timeout_s=timeout_s)
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self.call(self.guard.close(), timeout_s=30.0)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, work: Coroutine[Any, Any, T], *, timeout_s: float | None = None) -> T:
        """Run a coroutine on the guard's loop and wait for its result in this thread."""
        if self._loop is None:
            work.close()
            raise RuntimeError("the SyncAgentGuard is not started: use `with SyncAgentGuard(...) as guard:`")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout_s)

    def session(self, session_id: str, *, agent_id: str, tenant_id: str, user_id: str) -> SyncSession:
        inner = self.guard.session(session_id, agent_id=agent_id, tenant_id=tenant_id, user_id=user_id)
        return SyncSession(self, inner)

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self.call(self.guard.flush(timeout_s))


class SyncSession:
    """A `GuardedSession` for sync code; `.session` is the async one underneath."""

    def __init__(self, guard: SyncAgentGuard, session: GuardedSession) -> None:
        self._guard = guard
        self.session = session
        self.session_id = session.session_id
        self.agent_id = session.agent_id
        self.tenant_id = session.tenant_id

    def __enter__(self) -> Self:
        self.attach()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = "killed" if self.session.kill else ("failed" if exc else "completed")
        self._guard.call(self.session.detach(outcome))

    def attach(self, task: str = "") -> None:
        self._guard.call(self.session.attach(task))

    def detach(self, outcome: str = "completed") -> None:
        self._guard.call(self.session.detach(outcome))

    @property
    def killed(self) -> bool:
        return self.session.killed

    @property
    def kill(self) -> KillCommand | None:
        return self.session.kill

    @property
    def steps(self) -> int:
        return self.session.steps

    def check(self) -> None:
        self.session.check()

    def stop_error(self) -> TripwireStop | None:
        return self.session.stop_error()

    def on_kill(self, callback: Callable[[KillCommand], object]) -> Callable[[], None]:
        return self.session.on_kill(callback)

    def wait_killed(self, timeout_s: float | None = None) -> KillCommand:
        return self._guard.call(self.session.wait_killed(), timeout_s=timeout_s)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The guarded run: `fn` runs in this thread; a kill interrupts it and `run` raises `SessionKilled`
        (also when `fn` swallowed the interrupt and returned), chained to what `fn` raised instead.

        Not for an `fn` that runs an asyncio event loop (`asyncio.run`, a framework's `run_sync`): an
        interrupt cannot wake a loop waiting in select, and one landing in a loop callback is logged and
        dropped by asyncio. Wrap such code in `running()` and cancel the loop's task from `on_kill`, as the
        framework adapters do."""
        with self.running(interruptible=True):
            return fn(*args, **kwargs)

    @contextlib.contextmanager
    def running(self, *, interruptible: bool = False) -> Iterator[None]:
        """Mark a guarded run in this thread; with `interruptible`, a kill injects an interrupt into it."""
        session = self.session
        session.check()
        session._managed = True
        session._thread_started(interruptible=interruptible)
        try:
            try:
                yield
            finally:
                session._thread_ended(interruptible=interruptible)
        except _Interrupt as exc:
            assert session.kill is not None
            raise SessionKilled(session.kill) from exc
        except TripwireStop:
            raise
        except BaseException as exc:
            if session.kill is not None:
                raise SessionKilled(session.kill) from exc
            raise
        session.check()

    def call_tool(self, tool_name: str, args: Any, fn: Callable[..., T], *a: Any, **kw: Any) -> T:
        """Call a sync tool through the guard in this thread; while it runs it counts as the session's work,
        so a kill that arrives meanwhile is acknowledged `stopped` only after it returns."""
        call = self.tool_started(tool_name, args)
        session = self.session
        session._thread_started(interruptible=False)
        try:
            result = fn(*a, **kw)
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            session._thread_ended(interruptible=False)
        call.returned(result)
        session.check()
        return result

    @contextlib.contextmanager
    def turn(self, model: str, *, estimate_usd: float | None = None) -> Iterator[SyncTurn]:
        """Guard one model call: `with session.turn("gpt-4o") as t: ...; t.record(input_tokens=...)`."""
        call = self.model_started(model, estimate_usd=estimate_usd)
        turn = SyncTurn()
        try:
            yield turn
        finally:
            call.completed(**turn.usage)

    def tool_started(self, tool_name: str, args: Any, *, agent_id: str | None = None) -> ToolCall:
        return self.session.tool_started_sync(tool_name, args, agent_id=agent_id)

    def model_started(
        self, model: str, *, agent_id: str | None = None, estimate_usd: float | None = None
    ) -> ModelCall:
        return self.session.model_started_sync(model, agent_id=agent_id, estimate_usd=estimate_usd)

    def record_tool(self, tool_name: str, args: Any, **kwargs: Any) -> None:
        self.session.record_tool(tool_name, args, **kwargs)

    def record_turn(self, model: str, **kwargs: Any) -> None:
        self.session.record_turn(model, **kwargs)

    def send_message(self, to_agent_id: str, content: Any, *, agent_id: str | None = None) -> None:
        self._guard.call(self.session.send_message(to_agent_id, content, agent_id=agent_id))

    def message_received(
        self, content: Any, *, from_agent_id: str = "user", agent_id: str | None = None
    ) -> None:
        self._guard.call(
            self.session.message_received(content, from_agent_id=from_agent_id, agent_id=agent_id)
        )

    def record_input(self, content: Any, *, from_agent_id: str = "user", agent_id: str | None = None) -> None:
        self.session.record_input(content, from_agent_id=from_agent_id, agent_id=agent_id)

    def context_used(
        self, sources: Iterable[ContextSource | Mapping[str, Any]], *, agent_id: str | None = None
    ) -> None:
        self._guard.call(self.session.context_used(sources, agent_id=agent_id))

    def remember(self, store: str, key: str, content: Any, *, agent_id: str | None = None) -> None:
        self._guard.call(self.session.remember(store, key, content, agent_id=agent_id))

    def recall(self, store: str, key: str, content: Any, *, agent_id: str | None = None) -> None:
        self._guard.call(self.session.recall(store, key, content, agent_id=agent_id))


SyncTurn = TurnUsage
"""The usage of one sync turn; `record()` it before the block ends."""
