"""The agent-side SDK: wrap an agent's work so Tripwire sees it and can stop it.

`AgentGuard` is one per agent process: it owns the event producer, the control subscription and the fence
client. `guard.session(...)` attaches one unit of work; its guarded calls (`call_tool`, `turn`, `remember`,
`recall`) publish the called/returned events with timing, error class and content fingerprints, and `run()`
runs the work as a task. When a valid kill for the session arrives, the SDK cancels the work and every
guarded call in flight (they raise `SessionKilled`), refuses further guarded calls, and publishes an
acknowledgement. A kill that was issued before the session attached is found in the fence at attach. A valid
kill with scope `tool` opens a circuit for that tool in every session of the process instead (`ToolCircuits`):
calls are refused without running until it half-opens, when one probe call decides whether it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import orjson
from pydantic import SecretStr

from agents_contract._commands import CommandSigner, KillCommand, parse_command
from agents_contract._events import (
    AgentEvent,
    ContractError,
    ControlAck,
    Heartbeat,
    MemoryRead,
    MemoryWritten,
    MessageSent,
    SessionEnded,
    SessionStarted,
    ToolCalled,
    ToolReturned,
    TurnCompleted,
    TurnStarted,
    encode_event,
)
from agents_contract._fence import Fence
from agents_contract._fingerprint import canonical_digest, fingerprints
from agents_contract._kafka import ControlSubscription, EventPublisher

T = TypeVar("T")
log = logging.getLogger("tripwire.sdk")

_RECENT_EVENTS: Final = 512


class SessionKilled(RuntimeError):
    """Raised by guarded calls of a session that Tripwire killed; `command` says who and why."""

    def __init__(self, command: KillCommand) -> None:
        super().__init__(f"session {command.target} was killed by {command.detector}: {command.reason}")
        self.command = command


class ToolCircuitOpen(RuntimeError):
    """Raised by `call_tool` for a tool whose circuit Tripwire opened; the tool did not run. `until_ms` is
    when the circuit half-opens (already past while another call is probing it: retry shortly)."""

    def __init__(self, tool: str, until_ms: int) -> None:
        super().__init__(f"tool {tool} is switched off by Tripwire until {until_ms} ms")
        self.tool = tool
        self.until_ms = until_ms


def digest(value: Any) -> str:
    """A stable digest of JSON-like data (keys sorted), so equal arguments give equal digests."""
    body = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)
    return hashlib.sha256(body).hexdigest()[:32]


def _text_of(value: Any) -> str | None:
    """The text to fingerprint: text as it is, JSON-like data as orjson writes it, nothing for the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, ValueError):
            return None
    return None


def _content_fingerprints(value: Any) -> list[int] | None:
    text = _text_of(value)
    return None if text is None else fingerprints(text)


def _describe_result(result: Any) -> tuple[str | None, list[int] | None]:
    """Result digest and fingerprints; a result the SDK cannot describe is reported without them rather
    than failing a call whose tool succeeded."""
    try:
        result_digest: str | None = digest(result)
    except (TypeError, ValueError, RecursionError):
        result_digest = None
    return result_digest, _content_fingerprints(result) or None


@dataclass(slots=True)
class _Circuit:
    generation: int
    open_ms: int
    # When the open period ends (the circuit half-opens); None once closed.
    until_ms: int | None
    probing: bool = False


class ToolCircuits:
    """Per-tool circuits of one agent process, opened and closed by signed `tool`-scope kill commands.

    A command's evidence says `circuit` ("open" or "closed"), `generation` and, to open, `open_ms`. An open
    circuit refuses calls until `issued_at_ms + open_ms` by the injected clock, then half-opens: one probe
    call at a time may run; its success closes the circuit, its failure re-opens it for `open_ms` more.
    Generations order the commands, which the control topic does not (several partitions, redelivery after
    a worker crash): a command no newer than the one in force is ignored, except that a close of the same
    generation wins over its open. Commands are verified here too, so nothing unsigned ever opens a circuit.
    """

    def __init__(self, signer: CommandSigner, *, clock: Callable[[], float] = time.time) -> None:
        self._signer = signer
        self._clock = clock
        # (tenant_id, tool): "" for the fleet-wide circuit of a tool, a tenant id for that tenant's own.
        self._circuits: dict[tuple[str, str], _Circuit] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def apply(self, command: KillCommand) -> bool:
        """Apply a `tool`-scope command; True when it opened or closed a circuit."""
        if command.scope != "tool" or not self._signer.verify(command):
            return False
        key, evidence = (command.tenant_id or "", command.target), command.evidence
        tool = command.target
        action, generation = evidence.get("circuit"), _count(evidence.get("generation"))
        open_ms = _count(evidence.get("open_ms"))
        if action not in ("open", "closed") or generation is None or (action == "open" and open_ms is None):
            log.warning(
                "ignored tool command %s: evidence %r is not a circuit change", command.command_id, evidence
            )
            return False
        current = self._circuits.get(key)
        if action == "open" and open_ms is not None:
            if current is not None and generation <= current.generation:
                return False
            until = command.issued_at_ms + open_ms
            self._circuits[key] = _Circuit(generation, open_ms, until)
            log.warning(
                "tool %s circuit opened until %d ms%s by %s (generation %d): %s",
                tool,
                until,
                f" for tenant {key[0]}" if key[0] else "",
                command.detector,
                generation,
                command.reason,
            )
            return True
        if current is None:
            # Remembered, so that an older open arriving after it is known to be older.
            self._circuits[key] = _Circuit(generation, 0, None)
            return False
        if generation < current.generation or (generation == current.generation and current.until_ms is None):
            return False
        was_open = current.until_ms is not None
        self._circuits[key] = _Circuit(generation, current.open_ms, None)
        if was_open:
            log.warning("tool %s circuit closed by %s (generation %d)", tool, command.detector, generation)
        return was_open

    def _circuit_for(self, tool: str, tenant_id: str) -> tuple[tuple[str, str], _Circuit] | None:
        """The circuit that holds `tool` back for `tenant_id` (the fleet's first, then the tenant's own);
        None when neither is open or half-open."""
        for key in (("", tool), (tenant_id, tool)) if tenant_id else (("", tool),):
            circuit = self._circuits.get(key)
            if circuit is not None and circuit.until_ms is not None:
                return key, circuit
        return None

    def state(self, tool: str, tenant_id: str = "") -> Literal["closed", "open", "half_open"]:
        found = self._circuit_for(tool, tenant_id)
        if found is None or found[1].until_ms is None:
            return "closed"
        return "open" if self._now_ms() < found[1].until_ms else "half_open"

    def admit(self, tool: str, tenant_id: str = "") -> tuple[tuple[str, str], int] | None:
        """Let one call of `tool` through or raise `ToolCircuitOpen`. Returns None for a closed circuit, and
        for the probe of a half-open one a token, which the caller must hand to `settle`."""
        found = self._circuit_for(tool, tenant_id)
        if found is None:
            return None
        key, circuit = found
        assert circuit.until_ms is not None  # _circuit_for returns only circuits that are not closed
        if self._now_ms() < circuit.until_ms or circuit.probing:
            raise ToolCircuitOpen(tool, circuit.until_ms)
        circuit.probing = True
        return key, circuit.generation

    def settle(self, token: tuple[tuple[str, str], int], *, ok: bool | None) -> None:
        """Report the probe's outcome: True closes, False re-opens, None (the call was cancelled or its
        session killed, which says nothing about the tool) lets the next call probe."""
        key, generation = token
        circuit = self._circuits.get(key)
        if circuit is None or circuit.generation != generation or not circuit.probing:
            return  # a command changed the circuit while the probe ran; the command wins
        circuit.probing = False
        if circuit.until_ms is None or ok is None:
            return
        tool = key[1]
        if ok:
            circuit.until_ms = None
            log.warning("tool %s circuit closed: a probe call succeeded", tool)
        else:
            circuit.until_ms = self._now_ms() + circuit.open_ms
            log.warning(
                "tool %s circuit re-opened until %d ms: the probe call failed", tool, circuit.until_ms
            )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class AgentGuard:
    """The per-process connection to Tripwire: events out, control commands in, the fence at attach."""

    def __init__(
        self,
        *,
        bootstrap: str,
        redis_url: str,
        signing_key: SecretStr | str | bytes,
        events_topic: str = "agent.events",
        control_topic: str = "agent.control",
        idempotent: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = CommandSigner(signing_key)
        self._publisher = EventPublisher(bootstrap, events_topic, idempotent=idempotent)
        self._control = ControlSubscription(bootstrap, control_topic)
        self._fence = Fence(redis_url)
        self._clock = clock
        self.tool_circuits = ToolCircuits(self._signer, clock=clock)
        self._sessions: dict[str, list[GuardedSession]] = {}
        self._listener: asyncio.Task[None] | None = None
        self.forged_commands = 0

    async def start(self) -> None:
        await self._fence.ping()
        await self._publisher.start()
        await self._control.start()
        self._listener = asyncio.create_task(self._listen(), name="tripwire-control")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        with contextlib.suppress(Exception):
            await self._publisher.flush()
        await self._publisher.stop()
        await self._control.stop()
        await self._fence.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self, session_id: str, *, agent_id: str, tenant_id: str, user_id: str) -> GuardedSession:
        return GuardedSession(self, session_id, agent_id=agent_id, tenant_id=tenant_id, user_id=user_id)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _publish(self, event: AgentEvent) -> asyncio.Future[object]:
        return await self._publisher.publish(event.session_id.encode(), encode_event(event))

    async def _attach(self, session: GuardedSession) -> None:
        self._sessions.setdefault(session.session_id, []).append(session)
        # The control subscription's positions were fixed in start(), before this lookup: a kill written to
        # the fence after it is published after it too, so the listener sees it. Nothing falls in between.
        command = await self._fence.lookup(session.session_id)
        if command is not None:
            self._deliver(command, source="fence")

    def _detach(self, session: GuardedSession) -> None:
        attached = self._sessions.get(session.session_id, [])
        if session in attached:
            attached.remove(session)
        if not attached:
            self._sessions.pop(session.session_id, None)

    async def _listen(self) -> None:
        async for raw in self._control.records():
            try:
                command = parse_command(raw)
            except ContractError as exc:
                self.forged_commands += 1
                log.warning("ignored a control record that is not a command: %s", exc.reason)
                continue
            self._deliver(command, source="control")

    def _deliver(self, command: KillCommand, *, source: str) -> None:
        if not self._signer.verify(command):
            self.forged_commands += 1
            log.warning(
                "ignored %s command %s for %s %s: signature does not verify",
                source,
                command.command_id,
                command.scope,
                command.target,
            )
            return
        if command.scope == "tool":
            # A tool circuit is the process's, not a session's: nothing to cancel and no session to ack for.
            self.tool_circuits.apply(command)
            return
        if command.scope != "session":
            log.debug(
                "command %s has scope %s, which this SDK does not enforce", command.command_id, command.scope
            )
            return
        for session in list(self._sessions.get(command.target, ())):
            session._on_kill(command)


class GuardedSession:
    """One agent's part of one session: publishes its events and stops its work on a kill."""

    def __init__(self, guard: AgentGuard, session_id: str, *, agent_id: str, tenant_id: str, user_id: str):
        self._guard = guard
        self.session_id = session_id
        self.agent_id = agent_id
        self.tenant_id = tenant_id
        self.user_id = user_id
        # Starting the sequence at the attach time in microseconds keeps it increasing across agent restarts,
        # which is what the worker's replay filter needs; no counter has to be stored anywhere.
        self._seq = time.time_ns() // 1000
        self.kill: KillCommand | None = None
        self.kill_received_at: float | None = None
        self.kill_latency_ms: float | None = None
        self.steps_after_breach: int | None = None
        self._killed = asyncio.Event()
        self._work: set[asyncio.Future[Any]] = set()
        self._sent_at: OrderedDict[str, float] = OrderedDict()
        self._step_seqs: deque[int] = deque(maxlen=_RECENT_EVENTS)
        self._pending: set[asyncio.Task[None]] = set()
        self.steps = 0

    async def __aenter__(self) -> Self:
        await self.attach()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.detach(outcome="killed" if self.kill else ("failed" if exc else "completed"))

    async def attach(self, task: str = "") -> None:
        await self._guard._attach(self)
        if self.kill is None:
            await self._emit(SessionStarted, task=task)

    async def detach(self, outcome: str = "completed") -> None:
        if self.kill is None:
            await self._emit(SessionEnded, outcome=outcome)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._guard._detach(self)

    @property
    def killed(self) -> bool:
        return self.kill is not None

    async def wait_killed(self) -> KillCommand:
        await self._killed.wait()
        assert self.kill is not None
        return self.kill

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run the session's work as a task that a kill cancels; a killed run raises `SessionKilled`."""
        self._gate()
        task = asyncio.ensure_future(work)
        return await self._watch(task)

    async def call_tool(
        self, tool_name: str, args: Any, fn: Callable[..., Awaitable[T]], *a: Any, **kw: Any
    ) -> T:
        """Call a tool through the guard: refused once killed or while the tool's circuit is open
        (`ToolCircuitOpen`, nothing published), cancelled by a kill, timed and reported."""
        self._gate()
        circuits = self._guard.tool_circuits
        probe = circuits.admit(tool_name, self.tenant_id)
        outcome: bool | None = None
        try:
            call_id = uuid.uuid4().hex
            await self._emit(
                ToolCalled,
                step=True,
                tool_name=tool_name,
                call_id=call_id,
                args_digest=canonical_digest(args),
            )
            started = time.perf_counter()
            status, error_type, result_digest, prints = "ok", None, None, None
            try:
                result = await self._watch(asyncio.ensure_future(fn(*a, **kw)))
                outcome = True
                result_digest, prints = _describe_result(result)
                return result
            except BaseException as exc:
                status, error_type = "error", type(exc).__name__
                if isinstance(exc, Exception) and not isinstance(exc, SessionKilled):
                    outcome = False
                raise
            finally:
                await self._emit(
                    ToolReturned,
                    tool_name=tool_name,
                    call_id=call_id,
                    status=status,
                    error_type=error_type,
                    result_digest=result_digest,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    fingerprints=prints,
                )
        finally:
            if probe is not None:
                circuits.settle(probe, ok=outcome)

    def turn(self, model: str) -> Turn:
        """Guard one LLM turn: `async with session.turn("gpt-4o") as turn: ...; turn.record(...)`."""
        return Turn(self, model)

    async def send_message(self, to_agent_id: str, content: Any) -> None:
        self._gate()
        await self._emit(MessageSent, to_agent_id=to_agent_id, content_digest=digest(content))

    async def remember(self, store: str, key: str, content: Any) -> None:
        """Report a write of `content` (text or JSON-like) to memory `store` under `key`: only its
        fingerprints leave the process."""
        self._gate()
        prints = _content_fingerprints(content) or []
        await self._emit(MemoryWritten, store=store, key=key, fingerprints=prints)

    async def recall(self, store: str, key: str, content: Any) -> None:
        """Report that `content` was read back from memory `store` under `key` (its fingerprints only)."""
        self._gate()
        prints = _content_fingerprints(content) or []
        await self._emit(MemoryRead, store=store, key=key, fingerprints=prints)

    async def heartbeat(self) -> None:
        await self._emit(Heartbeat)

    def _gate(self) -> None:
        if self.kill is not None:
            raise SessionKilled(self.kill)

    async def _watch(self, task: asyncio.Task[T] | asyncio.Future[T]) -> T:
        self._work.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self.kill is not None:
                raise SessionKilled(self.kill) from None
            raise
        finally:
            self._work.discard(task)

    async def _emit(self, kind: type[AgentEvent], *, step: bool = False, **fields: Any) -> None:
        self._seq += 1
        event = kind(
            event_id=uuid.uuid4().hex,
            session_id=self.session_id,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
            user_id=self.user_id,
            seq=self._seq,
            event_time_ms=self._guard.now_ms(),
            **{k: v for k, v in fields.items() if v is not None},
        )
        self._sent_at[event.event_id] = time.perf_counter()
        if len(self._sent_at) > _RECENT_EVENTS:
            self._sent_at.popitem(last=False)
        if step:
            self.steps += 1
            self._step_seqs.append(self._seq)
        await self._guard._publish(event)

    def _on_kill(self, command: KillCommand) -> None:
        if self.kill is not None:
            return
        now = time.perf_counter()
        self.kill, self.kill_received_at = command, now
        sent = self._sent_at.get(command.breach_event_id or "")
        self.kill_latency_ms = None if sent is None else (now - sent) * 1000
        if command.breach_seq is not None:
            self.steps_after_breach = sum(1 for seq in self._step_seqs if seq > command.breach_seq)
        for task in list(self._work):
            task.cancel(f"tripwire kill {command.command_id}")
        self._killed.set()
        log.warning("session %s killed by %s: %s", self.session_id, command.detector, command.reason)
        ack = asyncio.ensure_future(self._acknowledge(command))
        self._pending.add(ack)
        ack.add_done_callback(self._pending.discard)

    async def _acknowledge(self, command: KillCommand) -> None:
        try:
            future = await self._ack_event(command)
            await future
        except Exception:
            log.exception("could not acknowledge kill %s of session %s", command.command_id, self.session_id)

    async def _ack_event(self, command: KillCommand) -> asyncio.Future[object]:
        self._seq += 1
        event = ControlAck(
            event_id=uuid.uuid4().hex,
            session_id=self.session_id,
            agent_id=self.agent_id,
            tenant_id=self.tenant_id,
            user_id=self.user_id,
            seq=self._seq,
            event_time_ms=self._guard.now_ms(),
            command_id=command.command_id,
            outcome="stopped",
            kill_latency_ms=self.kill_latency_ms,
        )
        return await self._guard._publish(event)


class Turn:
    """One guarded LLM turn; call `record()` with the usage before the block ends."""

    def __init__(self, session: GuardedSession, model: str) -> None:
        self._session = session
        self.model = model
        self._usage: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0}

    def record(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float = 0.0,
        context_tokens: int = 0,
        output: Any = None,
    ) -> None:
        self._usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "context_tokens": context_tokens,
            "output_digest": None if output is None else digest(output),
        }

    async def call(self, work: Awaitable[T]) -> T:
        """Await the model call inside the turn so that a kill cancels it."""
        return await self._session._watch(asyncio.ensure_future(work))

    async def __aenter__(self) -> Self:
        self._session._gate()
        await self._session._emit(TurnStarted, step=True, model=self.model)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session._emit(TurnCompleted, model=self.model, **self._usage)
