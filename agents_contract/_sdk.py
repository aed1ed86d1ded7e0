"""The agent-side SDK: wrap an agent's work so Tripwire sees it and can stop it.

`AgentGuard` is one per agent process: it owns the event producer, the control subscription and the fence
client. `guard.session(...)` attaches one agent's (or one team's) part of a session. Its guarded calls
(`call_tool`, `turn`, or `tool_started`/`model_started` for framework adapters) are refused once the session
is killed, pass the pre-call budget gate when it is on, and publish the called/returned events with timing,
error class and content fingerprints; `record_tool`/`record_turn` report calls after the fact. `run()` runs
the work as a task that a kill cancels.

A kill is acknowledged honestly: `stopping` as soon as it arrives while a guarded run (`run`, `running`, or
the session's own attach/detach span when it has no runs) or a call running in a thread is still going, and
`stopped` only once they have all ended, so the worker escalates a run that does not stop.

`TripwireStop` and its subclasses derive from BaseException, as `asyncio.CancelledError` does: frameworks and
agent code that catch `Exception` around a tool or a model call cannot mistake a kill for a tool error, show
it to the model and carry on.

Events leave through one ordered outbox per guard: a guarded call only encodes its event and queues it
(a few microseconds); a sender task hands the queue to the producer. Fingerprints of a large result are
computed in a thread, so a kill is delivered while a big page is being fingerprinted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import itertools
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import orjson
from aiokafka.errors import KafkaError
from pydantic import SecretStr, TypeAdapter, ValidationError
from redis.exceptions import RedisError

from agents_contract._circuits import MAX_OPEN_S, ToolCircuitOpen, ToolCircuits
from agents_contract._commands import ED25519, CommandSigner, KillCommand, parse_command, refusal
from agents_contract._events import SCHEMA_VERSION, ContextSource, ContractError, _Id
from agents_contract._fence import Fence
from agents_contract._fingerprint import canonical_digest, fingerprints, sketch
from agents_contract._gate import BudgetGate, Refusal, Reservation
from agents_contract._health import COMMANDS_REJECTED, REFUSED, Health, OnOutage
from agents_contract._kafka import ControlSubscription, EventPublisher
from agents_contract._provenance import RecordSigner
from agents_contract._security import KafkaSecurity
from agents_contract._text import clip, clip_id

T = TypeVar("T")
C = TypeVar("C", "ToolCall", "ModelCall")
log = logging.getLogger("tripwire.sdk")

_RECENT_EVENTS: Final = 512
_MAX_NAME: Final = 256
# Results longer than this (as text) are fingerprinted in a thread, never on the event loop.
_INLINE_TEXT: Final = 16_384
MAX_FINGERPRINT_CHARS: Final = 262_144
"""Only the first this many characters of a result are fingerprinted (about 0.2 s in a thread)."""
_ACK_WAIT_S: Final = 5.0
# A send waits this long for the broker's metadata before the broker is taken as unreachable.
_SEND_WAIT_S: Final = 2.0
_PROBE_MAX_S: Final = 5.0
_CLOSE_WAIT_S: Final = 5.0
_FENCE_POLL_S: Final = 1.0
# Background tasks a closing guard cancels rather than waits for (an in-call heartbeat sleeps for a minute).
_HOUSEKEEPING: Final = frozenset(
    {"AgentGuard._reconnect", "AgentGuard._watch_fence", "GuardedSession._beat_while_in_call"}
)

__all__ = [
    "MAX_FINGERPRINT_CHARS",
    "AgentGuard",
    "BudgetExhausted",
    "GuardedSession",
    "ModelCall",
    "SessionKilled",
    "ToolCall",
    "ToolCircuitOpen",
    "ToolCircuits",
    "TripwireStop",
    "TripwireUnavailable",
    "Turn",
    "digest",
]


class TripwireStop(BaseException):
    """Tripwire stopped this call or run. A BaseException, so `except Exception` does not swallow it."""


class SessionKilled(TripwireStop):
    """Raised by guarded calls and runs of a session that Tripwire killed; `command` says who and why."""

    def __init__(self, command: KillCommand) -> None:
        super().__init__(f"session {command.target} was killed by {command.detector}: {command.reason}")
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.command,))


class BudgetExhausted(TripwireStop):
    """The pre-call gate refused a call: with it, `limit` (e.g. `session_budget.max_cost_usd`) would be
    passed. The call did not run."""

    def __init__(self, session_id: str, limit: str, spent: float, cap: float) -> None:
        super().__init__(f"session {session_id}: {limit} is {cap:g}; {spent:g} is spent or reserved")
        self.session_id, self.limit, self.spent, self.cap = session_id, limit, spent, cap

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.session_id, self.limit, self.spent, self.cap))


class TripwireUnavailable(TripwireStop):
    """Tripwire could not be reached and the guard was configured to fail closed (`on_outage`)."""


class _Interrupt(BaseException):
    """Injected into a thread running a sync guarded run when its session is killed."""


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


def _content_fingerprints(value: Any, *, cooperative: bool = False) -> list[int] | None:
    text = _text_of(value)
    return None if text is None else fingerprints(text[:MAX_FINGERPRINT_CHARS], cooperative=cooperative)


def _describe_result(result: Any, *, cooperative: bool = False) -> tuple[str | None, list[int] | None]:
    """Result digest and fingerprints; a result the SDK cannot describe is reported without them rather
    than failing a call whose tool succeeded."""
    try:
        result_digest: str | None = digest(result)
    except (TypeError, ValueError, RecursionError):
        result_digest = None
    try:
        prints = _content_fingerprints(result, cooperative=cooperative) or None
    except (TypeError, ValueError, RecursionError):
        prints = None
    return result_digest, prints


def _large(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) > _INLINE_TEXT
    if isinstance(value, dict | list | tuple):
        return len(value) > 64 or len(_text_of(value) or "") > _INLINE_TEXT
    return False


_ID: TypeAdapter[str] = TypeAdapter(_Id)


def _checked_id(what: str, value: str) -> str:
    try:
        return _ID.validate_python(value)
    except ValidationError:
        raise ValueError(
            f"{what} {value[:80]!r} is not a valid id: 1-128 characters of A-Z a-z 0-9 . _ : @ / + = -"
        ) from None


_MAX_SOURCES: Final = 64


def _context_source(source: ContextSource | Mapping[str, Any]) -> ContextSource:
    if isinstance(source, ContextSource):
        return source
    fields = dict(source)
    if isinstance(fields.get("name"), str):
        fields["name"] = clip(fields["name"], 256)
    if isinstance(fields.get("id"), str):
        fields["id"] = clip_id(fields["id"], 256)  # still unique, still recognisable
    try:
        return ContextSource.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'source'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:3]
        )
        name = str(fields.get("name"))[:80]
        raise ValueError(f"context source {name!r} is not valid: {problems}") from None


def _usd(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of dollars >= 0, got {value!r}")
    return float(value)


def _count(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}")
    return value


_YIELD_EVERY_S: Final = 0.001
_last_yield = 0.0


async def _yield_to_the_loop() -> None:
    """A pass of the event loop before a guarded call when none ran for a millisecond: a run of instant calls
    (a cached tool, a fake model) would otherwise never let the control listener read a kill or the outbox
    send an event. Calls that await real work yield anyway and pay nothing here."""
    global _last_yield
    now = time.perf_counter()
    if now - _last_yield >= _YIELD_EVERY_S:
        _last_yield = now
        await asyncio.sleep(0)


_Item = tuple[bytes, "bytes | asyncio.Future[bytes]", "asyncio.Future[None] | None"]


class _Outbox:
    """The guard's ordered, bounded queue of encoded events and the task that produces them.

    Producing is the slow half of publishing (aiokafka's send machinery, tens of microseconds); queueing is
    an append. An item may be a future of its bytes (a result being fingerprinted in a thread): the sender
    waits for it in place, so events leave in the order they were queued. Any thread may queue.

    Nothing is lost to a broker outage short of the buffer's size: a send that does not get through (no
    metadata within `_SEND_WAIT_S`, or a delivery that failed) puts the event back at the head, in its
    order, and the sender waits for the broker to answer a metadata probe before it sends again. When the
    buffer is full the oldest event is dropped and counted (`Health.dropped`), never the agent's call.
    """

    def __init__(
        self, publisher: EventPublisher, loop: asyncio.AbstractEventLoop, health: Health, *, capacity: int
    ) -> None:
        self._publisher = publisher
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._health = health
        self._capacity = capacity
        self._items: deque[_Item] = deque()
        # Sent, not yet confirmed by the broker: send number -> item. Failed ones go back in send order.
        self._inflight: dict[int, _Item] = {}
        self._failed: list[tuple[int, _Item]] = []
        self._renew = False
        self._sends = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connected = asyncio.Event()
        self._task = loop.create_task(self._send(), name="tripwire-outbox")

    def __len__(self) -> int:
        return len(self._items) + len(self._inflight) + len(self._failed)

    def connected(self) -> None:
        """The publisher started: sending may begin."""
        self._connected.set()

    def put(
        self, key: bytes, value: bytes | asyncio.Future[bytes], done: asyncio.Future[None] | None = None
    ) -> None:
        if threading.get_ident() == self._loop_thread:
            self._append((key, value, done))
        else:
            self._loop.call_soon_threadsafe(self._append, (key, value, done))

    def _append(self, item: _Item) -> None:
        if len(self) >= self._capacity and self._items:
            _, _, dropped = self._items.popleft()
            if dropped is not None and not dropped.done():
                dropped.set_exception(ConnectionError("dropped from the SDK's full event buffer"))
            self._health.drop()
            if self._health.dropped in (1, 10, 100) or self._health.dropped % 1_000 == 0:
                log.error(
                    "the SDK's event buffer is full (%d events); %d dropped so far, oldest first",
                    self._capacity,
                    self._health.dropped,
                )
        self._items.append(item)
        self._health.queued(len(self))
        self._idle.clear()
        self._wake.set()

    async def _send(self) -> None:
        publisher, health = self._publisher, self._health
        await self._connected.wait()
        while True:
            if self._failed:
                self._failed.sort(key=lambda entry: entry[0])
                self._items.extendleft(item for _, item in reversed(self._failed))
                self._failed.clear()
            if not self._items:
                if not self._inflight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if not health.broker_reachable:
                await self._wait_for_broker()
                continue
            if self._renew and self._inflight:
                # Let what is in flight settle first (failing, it is queued again in order).
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._renew:
                # Sends failed: the idempotent producer's sequence numbers for them are spent, and after a
                # broker restart its retries can be refused for good (OutOfOrderSequenceNumber). A new
                # producer starts clean; the worker drops any event that did arrive twice.
                self._renew = False
                try:
                    async with asyncio.timeout(_CLOSE_WAIT_S):
                        await publisher.stop()
                        await publisher.start()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._renew = True
                    health.broker_lost(exc)
                    continue
            key, value, done = self._items[0]
            try:
                body = value if isinstance(value, bytes) else await value
                async with asyncio.timeout(_SEND_WAIT_S):
                    delivered = await publisher.publish(key, body)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, TimeoutError) as exc:
                health.broker_lost(exc or "no metadata")
                continue
            except Exception as exc:
                # Not the broker's fault (a result that could not be fingerprinted): this event is lost.
                self._items.popleft()
                log.warning("an event could not be encoded and is not sent: %r", exc)
                if done is not None and not done.done():
                    done.set_exception(exc)
                continue
            self._items.popleft()
            number = next(self._sends)
            self._inflight[number] = (key, body, done)
            delivered.add_done_callback(functools.partial(self._delivered, number))

    def _delivered(self, number: int, delivered: asyncio.Future[object]) -> None:
        item = self._inflight.pop(number, None)
        if item is None:
            return
        error = None if delivered.cancelled() else delivered.exception()
        if delivered.cancelled() or error is not None:
            self._failed.append((number, item))
            self._renew = True
            self._health.broker_lost(error or "send cancelled")
            self._wake.set()
            return
        self._health.broker_back()
        self._health.queued(len(self))
        if self._renew:
            self._wake.set()
        done = item[2]
        if done is not None and not done.done():
            done.set_result(None)
        if not self._items and not self._inflight and not self._failed:
            self._idle.set()

    async def _wait_for_broker(self) -> None:
        """Probe the broker with backoff until it answers; the buffered events then go out in order."""
        delay = 0.2
        while True:
            try:
                async with asyncio.timeout(_SEND_WAIT_S):
                    await self._publisher.probe()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _PROBE_MAX_S)
                continue
            self._health.broker_back()
            return

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued event is on the broker (at most `timeout_s`); True when it is."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                await self._publisher.flush()
        except (TimeoutError, KafkaError, OSError):
            return False
        return True

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for _, _, done in [*self._items, *self._inflight.values(), *(item for _, item in self._failed)]:
            if done is not None and not done.done():
                done.set_exception(ConnectionError("the guard closed before the event was sent"))


class AgentGuard:
    """The per-process connection to Tripwire: events out, control commands in, the fence at attach.

    Constructing it needs no event loop; `start()` (or `async with`) connects. `budget_gate=True` turns on the
    pre-call gate: every guarded model and tool call first reserves its step and `estimate_usd` (model calls:
    `model_reserve_usd` unless the call names its own) against the limits the worker published, one Redis
    round trip, and is refused with `BudgetExhausted` when a hard budget would be passed.

    An outage of Tripwire does not stop the agent (`on_outage="keep_working"`, the default): `start()` and
    `attach()` succeed with the broker or Redis unreachable, events wait in a bounded buffer
    (`buffer_events`, oldest dropped and counted when full), kills are looked up in the fence every second
    while the broker is away, and no Kafka or Redis error reaches agent code. `on_outage="fail_closed"`
    makes `start()` raise `TripwireUnavailable` when Tripwire cannot be reached within `connect_timeout_s`,
    and guarded calls raise it while the broker is unreachable. `guard.health` says which it is now.

    A secured cluster: `kafka_security` takes a `KafkaSecurity` (or its fields as a mapping), the same
    settings as the worker's `kafka.security` (TLS with a CA and client certificate, SASL PLAIN, SCRAM or
    OAUTHBEARER); the Redis URL carries Redis's TLS and ACL user (`rediss://user:password@host`).

    `call_heartbeat_s`: while a guarded tool or model call runs, a heartbeat saying since when goes out this
    often (0: never), so the stall detector can tell a long call from a silent agent.

    `event_key`: the tenant's event key, for a tenant whose events the workers require signed
    (`event_signing.tenant_keys`): every event then carries an HMAC of its bytes, and events of that tenant
    that anyone without the key publishes are dead-lettered instead of judged.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        redis_url: str,
        signing_key: SecretStr | str | bytes | None = None,
        verify_key: str | None = None,
        events_topic: str = "agent.events",
        control_topic: str = "agent.control",
        idempotent: bool = True,
        clock: Callable[[], float] = time.time,
        budget_gate: bool = False,
        model_reserve_usd: float = 0.0,
        on_outage: OnOutage = "keep_working",
        buffer_events: int = 100_000,
        connect_timeout_s: float = 10.0,
        max_circuit_open_s: float = MAX_OPEN_S,
        kafka_security: KafkaSecurity | Mapping[str, Any] | None = None,
        event_key: SecretStr | str | bytes | None = None,
        call_heartbeat_s: float = 60.0,
    ) -> None:
        if on_outage not in ("keep_working", "fail_closed"):
            raise ValueError(f"on_outage must be 'keep_working' or 'fail_closed', not {on_outage!r}")
        if buffer_events < 1:
            raise ValueError(f"buffer_events must be at least 1, not {buffer_events}")
        if not 0 <= call_heartbeat_s <= 3_600:
            raise ValueError(f"call_heartbeat_s must be between 0 (off) and 3600, not {call_heartbeat_s}")
        self.call_heartbeat_s = call_heartbeat_s
        self.health = Health(on_outage=on_outage)
        self._buffer_events = buffer_events
        self._connect_timeout_s = connect_timeout_s
        # `verify_key` (the workers' Ed25519 public key) is all an agent needs to believe commands, and it
        # cannot sign one; `signing_key` is the first release's shared HMAC key, readable for one release.
        self._signer = CommandSigner(signing_key, public_key=verify_key)
        self._bootstrap = bootstrap
        # The tenant's event key, where its tenant requires signed events (`event_signing.tenant_keys`).
        self._event_signer = None if event_key is None else RecordSigner([event_key], what="event_key")
        self._kafka_security = (
            kafka_security
            if isinstance(kafka_security, KafkaSecurity)
            else KafkaSecurity.model_validate(kafka_security or {})
        )
        self._events_topic, self._control_topic = events_topic, control_topic
        self._idempotent = idempotent
        self._redis_url = redis_url
        self._clock = clock
        self.budget_gate = budget_gate
        self.model_reserve_usd = _usd("model_reserve_usd", model_reserve_usd)
        self.tool_circuits = ToolCircuits(self._signer, clock=clock, max_open_s=max_circuit_open_s)
        self._sessions: dict[str, list[GuardedSession]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._publisher: EventPublisher | None = None
        self._control: ControlSubscription | None = None
        self._fence: Fence | None = None
        self._outbox: _Outbox | None = None
        self.gate: BudgetGate | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.forged_commands = 0
        # Verified commands refused as replayed or out of date (another epoch of the session, expired).
        self.stale_commands = 0
        # Each attached session's epoch as the fence last said (absent: not known, Redis did not answer).
        self._epochs: dict[str, int] = {}

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._fence = Fence(self._redis_url, ed25519=self._signer.ed25519)
        if self.budget_gate:
            self.gate = BudgetGate(self._fence.redis, clock=self._clock)
        self._publisher = EventPublisher(
            self._bootstrap,
            self._events_topic,
            idempotent=self._idempotent,
            security=self._kafka_security,
            signer=self._event_signer,
        )
        self._control = ControlSubscription(
            self._bootstrap, self._control_topic, security=self._kafka_security
        )
        self._outbox = _Outbox(self._publisher, self.loop, self.health, capacity=self._buffer_events)
        redis, kafka = await asyncio.gather(
            self._connect_redis(), self._connect_kafka(), return_exceptions=True
        )
        failure = (
            kafka if isinstance(kafka, BaseException) else redis if isinstance(redis, BaseException) else None
        )
        if failure is not None and self.health.on_outage == "fail_closed":
            await self.close()
            raise TripwireUnavailable(f"Tripwire is unreachable at start: {failure!r}") from failure
        if isinstance(redis, BaseException):
            self.health.redis(False, redis)
        if isinstance(kafka, BaseException):
            self.health.broker_lost(kafka)
            log.warning("the guard starts degraded; it connects to the broker in the background")
            self._background(self._reconnect())
        self._background(self._watch_fence())

    async def _connect_redis(self) -> None:
        assert self._fence is not None
        async with asyncio.timeout(self._connect_timeout_s):
            await self._fence.ping()
        self.health.redis(True)

    async def _connect_kafka(self) -> None:
        assert self._publisher is not None
        assert self._control is not None
        assert self._outbox is not None
        async with asyncio.timeout(self._connect_timeout_s):
            if not self._publisher.started:
                await self._publisher.start()
            self.health.broker_back()
            self._outbox.connected()
            if not self._control.started:
                await self._control.start(timeout_s=self._connect_timeout_s)
        self._listener = asyncio.create_task(self._listen(), name="tripwire-control")

    async def _reconnect(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect_kafka()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("broker still unreachable: %r", exc)
                delay = min(delay * 2, _PROBE_MAX_S)
                continue
            # Kills written while this guard could not read the control topic are in the fence.
            await self._check_fence()
            return

    async def _watch_fence(self) -> None:
        """While the broker is unreachable (or the control topic not yet read), look the attached sessions
        up in the fence every second: the worker writes a kill there before it publishes it."""
        was_down = False
        while True:
            await asyncio.sleep(_FENCE_POLL_S)
            down = not self.health.broker_reachable or self._listener is None
            if down or was_down:
                # Once more after the broker is back: a kill published while the control reader was
                # reconnecting is in the fence too.
                await self._check_fence()
            was_down = down

    async def _check_fence(self) -> None:
        if self._fence is None or not self._sessions:
            return
        ids = list(self._sessions)
        try:
            views = await self._fence.view_many(ids)
        except Exception as exc:
            self.health.redis(False, exc)
            return
        self.health.redis(True)
        for session_id, (command, epoch) in zip(ids, views, strict=True):
            if session_id in self._sessions:
                self._epochs[session_id] = epoch
            if command is not None:
                self._deliver(command, source="fence")

    def _refuse_if_unavailable(self) -> None:
        if self.health.on_outage == "fail_closed" and not self.health.broker_reachable:
            REFUSED.inc()
            raise TripwireUnavailable("Tripwire's broker is unreachable and the guard fails closed")

    async def close(self) -> None:
        """Stop, after at most about `_CLOSE_WAIT_S` for buffered events to reach the broker; never
        raises for an unreachable broker or Redis."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for task in list(self._tasks):
            if not task.done() and task.get_name() in _HOUSEKEEPING:
                task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        if self._outbox is not None:
            if not await self._outbox.drain(timeout_s=_CLOSE_WAIT_S) and len(self._outbox):
                log.error(
                    "closing with %d events not on the broker (it is unreachable); they are lost",
                    len(self._outbox),
                )
            await self._outbox.close()
        for stop in (
            self._publisher.stop if self._publisher is not None else None,
            self._control.stop if self._control is not None else None,
            self._fence.close if self._fence is not None else None,
        ):
            if stop is None:
                continue
            try:
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await stop()
            except (TimeoutError, KafkaError, OSError, RedisError) as exc:
                log.warning("a Tripwire client did not close cleanly: %r", exc)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self, session_id: str, *, agent_id: str, tenant_id: str, user_id: str) -> GuardedSession:
        return GuardedSession(self, session_id, agent_id=agent_id, tenant_id=tenant_id, user_id=user_id)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def outbox(self) -> _Outbox:
        if self._outbox is None:
            raise RuntimeError(
                "the AgentGuard is not started: use `async with guard:` or `await guard.start()`"
            )
        return self._outbox

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event queued so far is on the broker (at most `timeout_s`); True when it is."""
        return await self.outbox.drain(timeout_s)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name=getattr(work, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, session: GuardedSession) -> None:
        assert self._fence is not None
        self._sessions.setdefault(session.session_id, []).append(session)
        # The control subscription's positions were fixed in start(), before this lookup: a kill written to
        # the fence after it is published after it too, so the listener sees it. Nothing falls in between.
        try:
            ((command, epoch),) = await self._fence.view_many([session.session_id])
        except (RedisError, OSError) as exc:
            self.health.redis(False, exc)
            if self.health.on_outage == "fail_closed":
                raise TripwireUnavailable(f"the fence could not be read: {exc!r}") from exc
            return
        self.health.redis(True)
        # Commands of another epoch (issued before the session's last release) are refused from now on.
        self._epochs[session.session_id] = epoch
        if command is not None:
            self._deliver(command, source="fence")

    def _detach(self, session: GuardedSession) -> None:
        attached = self._sessions.get(session.session_id, [])
        if session in attached:
            attached.remove(session)
        if not attached:
            self._sessions.pop(session.session_id, None)
            self._epochs.pop(session.session_id, None)

    async def _listen(self) -> None:
        while True:
            try:
                await self._read_control()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The reader reconnects by itself; meanwhile the fence watch covers kills.
                self.health.broker_lost(exc)
                await asyncio.sleep(1.0)

    async def _read_control(self) -> None:
        assert self._control is not None
        async for raw in self._control.records():
            try:
                command = parse_command(raw)
            except ContractError as exc:
                self.forged_commands += 1
                COMMANDS_REJECTED.labels("forged").inc()
                log.warning("ignored a control record that is not a command: %s", exc.reason)
                continue
            self._deliver(command, source="control")

    def _deliver(self, command: KillCommand, *, source: str) -> None:
        if not self._signer.accept_hmac and not command.signature.startswith(ED25519):
            # An agent given only the public key reads the HMAC copies the workers still send beside each
            # Ed25519 command for older agents: not an attack, and not a command for this agent.
            log.debug("ignored the HMAC copy of command %s (this agent verifies Ed25519)", command.command_id)
            return
        if not self._signer.verify(command):
            self.forged_commands += 1
            COMMANDS_REJECTED.labels("forged").inc()
            log.warning(
                "ignored %s command %s for %s %s: signature does not verify",
                source,
                command.command_id,
                command.scope,
                command.target,
            )
            return
        why = refusal(command, now_ms=self.now_ms(), epoch=self._epochs.get(command.target))
        if why is not None:
            self.stale_commands += 1
            COMMANDS_REJECTED.labels(why).inc()
            log.warning(
                "ignored %s command %s for %s %s: %s (epoch %s, expires %s)",
                source,
                command.command_id,
                command.scope,
                command.target,
                "it is past its expiry" if why == "expired" else "it was issued before the session's release",
                command.epoch,
                command.expires_at_ms,
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
    """One agent's (or one team's) part of one session: publishes its events and stops its work on a kill.

    `agent_id=` on a guarded or reported call names another agent of the team for that step; one kill of
    the session stops them all.
    """

    def __init__(self, guard: AgentGuard, session_id: str, *, agent_id: str, tenant_id: str, user_id: str):
        self._guard = guard
        self.session_id = _checked_id("session_id", session_id)
        self.agent_id = _checked_id("agent_id", agent_id)
        self.tenant_id = _checked_id("tenant_id", tenant_id)
        self.user_id = _checked_id("user_id", user_id)
        self._key = self.session_id.encode()
        self._agents: set[str] = {self.agent_id}
        # Starting the sequence at the attach time in microseconds keeps it increasing across agent restarts,
        # which is what the worker's replay filter needs; no counter has to be stored anywhere. One counter
        # for every agent of the session: each agent's seqs increase, with gaps.
        self._seq = itertools.count(time.time_ns() // 1000)
        self.kill: KillCommand | None = None
        self.kill_received_at: float | None = None
        self.kill_latency_ms: float | None = None
        self.steps_after_breach: int | None = None
        self._killed = asyncio.Event()
        self._work: set[asyncio.Future[Any]] = set()
        self._sent_at: OrderedDict[str, float] = OrderedDict()
        self._step_seqs: deque[int] = deque(maxlen=_RECENT_EVENTS)
        self._on_kill_callbacks: list[Callable[[KillCommand], object]] = []
        # What must end before a kill is acknowledged `stopped`.
        self._runs = 0
        self._managed = False  # the session used run()/running(): its runs, not its span, are what stops
        self._attached = False
        self._threads = 0  # sync calls and runs executing in threads
        self._interruptible: dict[int, int] = {}  # thread id -> sync runs it is executing
        self._interrupt_lock = threading.Lock()
        self._ack_outcome: Literal["stopping", "stopped"] | None = None
        self._acks: list[asyncio.Future[None]] = []
        self.steps = 0
        # Guarded calls running now (by identity) and when each began, for the heartbeats sent meanwhile.
        self._open_calls: dict[int, int] = {}
        self._beating = False

    async def __aenter__(self) -> Self:
        await self.attach()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.detach(outcome="killed" if self.kill else ("failed" if exc else "completed"))

    async def attach(self, task: str = "") -> None:
        self._attached = True
        await self._guard._attach(self)
        if self.kill is None:
            self._emit("session.started", self.agent_id, {"task": clip(task, 256)})

    async def detach(self, outcome: str = "completed") -> None:
        if self.kill is None:
            self._emit("session.ended", self.agent_id, {"outcome": outcome})
        self._attached = False
        self._maybe_stopped()
        self._guard._detach(self)
        if self._acks:
            # The acknowledgement is on the broker when the session's block ends (bounded: never hang).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*self._acks, return_exceptions=True), _ACK_WAIT_S)

    # -- the kill ---------------------------------------------------------------------------------------

    @property
    def killed(self) -> bool:
        return self.kill is not None

    async def wait_killed(self) -> KillCommand:
        await self._killed.wait()
        assert self.kill is not None
        return self.kill

    def stop_error(self) -> TripwireStop | None:
        """The exception to raise for this session's stop, or None while it may go on."""
        return None if self.kill is None else SessionKilled(self.kill)

    def check(self) -> None:
        """Raise `SessionKilled` if the session was killed, or `TripwireUnavailable` if the guard fails
        closed and Tripwire's broker is unreachable (no I/O; safe from any thread)."""
        if self.kill is not None:
            raise SessionKilled(self.kill)
        self._guard._refuse_if_unavailable()

    def on_kill(self, callback: Callable[[KillCommand], object]) -> Callable[[], None]:
        """Call `callback(command)` when a kill arrives (on the guard's loop; at once if already killed):
        the hook for a framework's own termination path. Returns a function that unregisters it."""
        self._on_kill_callbacks.append(callback)
        if self.kill is not None:
            callback(self.kill)

        def unregister() -> None:
            with contextlib.suppress(ValueError):
                self._on_kill_callbacks.remove(callback)

        return unregister

    # -- guarded runs -----------------------------------------------------------------------------------

    async def run(self, work: Awaitable[T]) -> T:
        """Run the session's work as a task that a kill cancels; a killed run raises `SessionKilled`, also
        when the work swallowed the cancellation, chained to whatever the work raised instead."""
        if self.kill is not None:
            if isinstance(work, Coroutine):
                work.close()  # never started: no "coroutine was never awaited" warning
            raise SessionKilled(self.kill)
        task = asyncio.ensure_future(work)
        async with self.running():
            return await self._watch(task)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Mark a guarded run without a task of its own: its end is what a kill's `stopped` waits for. Leaving
        it while killed raises `SessionKilled`, chained to the exception that ended it."""
        self.check()
        self._managed = True
        self._runs += 1
        try:
            yield
        except TripwireStop:
            raise
        except BaseException as exc:
            if self.kill is not None:
                raise SessionKilled(self.kill) from (None if isinstance(exc, asyncio.CancelledError) else exc)
            raise
        finally:
            self._runs -= 1
            self._maybe_stopped()
        self.check()

    async def _watch(self, task: asyncio.Future[T]) -> T:
        self._work.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self.kill is not None:
                raise SessionKilled(self.kill) from None
            raise
        finally:
            self._work.discard(task)

    async def _in_call(self, work: Awaitable[T]) -> T:
        """Await a guarded call in the caller's own task (no task per call); a kill cancels that task and the
        call raises `SessionKilled`."""
        task = asyncio.current_task()
        if task is None or task in self._work:
            return await work
        self._work.add(task)
        try:
            return await work
        except asyncio.CancelledError:
            if self.kill is not None:
                task.uncancel()
                raise SessionKilled(self.kill) from None
            raise
        finally:
            self._work.discard(task)

    # -- guarded calls ----------------------------------------------------------------------------------

    async def tool_started(self, tool_name: str, args: Any, *, agent_id: str | None = None) -> ToolCall:
        """Pass the gates for one tool call and report it called: raises `SessionKilled`, `BudgetExhausted`
        or `ToolCircuitOpen` (the tool must not run). Report its end with `returned` or `failed`."""
        await _yield_to_the_loop()
        self.check()
        agent = self._agent(agent_id)
        probe = self._guard.tool_circuits.admit(tool_name, self.tenant_id)
        try:
            reservation = await self._reserve(agent, 0.0) if self._guard.gate is not None else None
            self.check()
        except BaseException:
            if probe is not None:
                self._guard.tool_circuits.settle(probe, ok=None)
            raise
        call = ToolCall(self, clip(tool_name, _MAX_NAME), agent, probe, reservation)
        self._emit(
            "tool.called",
            agent,
            {
                "gen_ai.tool.name": call.tool_name,
                "gen_ai.tool.call.id": call.call_id,
                "args_digest": canonical_digest(args),
                "args_sketch": sketch(args),
            },
            step=True,
        )
        self._call_began(call)
        return call

    async def model_started(
        self, model: str, *, agent_id: str | None = None, estimate_usd: float | None = None
    ) -> ModelCall:
        """Pass the gates for one model call and report the turn started: raises `SessionKilled` or
        `BudgetExhausted` (the model must not be called). Report its end with `completed` or `failed`."""
        await _yield_to_the_loop()
        self.check()
        agent = self._agent(agent_id)
        reservation = None
        if self._guard.gate is not None:
            usd = (
                self._guard.model_reserve_usd if estimate_usd is None else _usd("estimate_usd", estimate_usd)
            )
            reservation = await self._reserve(agent, usd)
            self.check()
        call = ModelCall(self, clip(model, _MAX_NAME), agent, reservation)
        self._emit("turn.started", agent, {"gen_ai.request.model": call.model}, step=True)
        self._call_began(call)
        return call

    def tool_started_sync(self, tool_name: str, args: Any, *, agent_id: str | None = None) -> ToolCall:
        """`tool_started` for code running in a thread other than the guard's event loop."""
        return self._admitted(self._from_thread(self.tool_started(tool_name, args, agent_id=agent_id)))

    def model_started_sync(
        self, model: str, *, agent_id: str | None = None, estimate_usd: float | None = None
    ) -> ModelCall:
        """`model_started` for code running in a thread other than the guard's event loop."""
        return self._admitted(
            self._from_thread(self.model_started(model, agent_id=agent_id, estimate_usd=estimate_usd))
        )

    def _admitted(self, call: C) -> C:
        # The gate passed on the loop thread; a kill that arrived while this thread woke up to the answer
        # stops the call here, before the caller runs it.
        if self.kill is not None:
            call.failed(SessionKilled(self.kill))
            raise SessionKilled(self.kill)
        return call

    def _from_thread(self, work: Coroutine[Any, Any, T]) -> T:
        loop = self._guard.loop
        if loop is None:
            work.close()
            raise RuntimeError("the AgentGuard is not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            work.close()
            raise RuntimeError("on the guard's own event loop, await the async form instead")
        return asyncio.run_coroutine_threadsafe(work, loop).result()

    async def call_tool(
        self, tool_name: str, args: Any, fn: Callable[..., Awaitable[T]], *a: Any, **kw: Any
    ) -> T:
        """Call a tool through the guard: refused once killed, past a hard budget or while the tool's circuit
        is open (`ToolCircuitOpen`, nothing published), cancelled by a kill, timed and reported."""
        call = await self.tool_started(tool_name, args)
        try:
            result = await self._in_call(fn(*a, **kw))
        except BaseException as exc:
            call.failed(exc)
            raise
        call.returned(result)
        return result

    def turn(self, model: str, *, estimate_usd: float | None = None) -> Turn:
        """Guard one LLM turn: `async with session.turn("gpt-4o") as turn: ...; turn.record(...)`."""
        return Turn(self, model, estimate_usd)

    async def send_message(self, to_agent_id: str, content: Any, *, agent_id: str | None = None) -> None:
        self.check()
        to = _checked_id("to_agent_id", to_agent_id)
        self._emit(
            "message.sent",
            self._agent(agent_id),
            {"to_agent_id": to, "content_digest": digest(content), "content_sketch": sketch(content)},
        )

    async def message_received(
        self, content: Any, *, from_agent_id: str = "user", agent_id: str | None = None
    ) -> None:
        """Report a message the agent received from outside the guarded team (a user, by default): a
        dialogue's turns then count as answers to it, not as an agent talking to itself."""
        self.check()
        self.record_input(content, from_agent_id=from_agent_id, agent_id=agent_id)

    def record_input(self, content: Any, *, from_agent_id: str = "user", agent_id: str | None = None) -> None:
        """`message_received` for code that cannot await it (a framework adapter handing a run its input):
        the same event, never raising; nothing once killed, or for a None input (a run resumed from a
        checkpoint)."""
        if content is None or self.kill is not None:
            return
        to = self._agent(agent_id)
        self._emit(
            "message.sent",
            _checked_id("from_agent_id", from_agent_id),
            {
                "to_agent_id": to,
                "content_digest": digest(content),
                "content_sketch": sketch(content),
                "external": True,
            },
        )

    async def context_used(
        self, sources: Iterable[ContextSource | Mapping[str, Any]], *, agent_id: str | None = None
    ) -> None:
        """Report the sources assembled into the context of the agent's next model turn: per source its
        name, the item's id, when it was fetched or is valid until, and whose it is (never its content), so
        the worker can tell stale data (`context_freshness`) and another tenant's or user's data
        (`context_scope`) in a turn."""
        self.check()
        self.record_context(sources, agent_id=agent_id)

    def record_context(
        self, sources: Iterable[ContextSource | Mapping[str, Any]], *, agent_id: str | None = None
    ) -> None:
        """`context_used` for code that cannot await it; nothing once killed. A source that is not one
        (a bad owner id, a negative time) raises ValueError naming it; an id or name past its limit is
        clipped. More than 64 sources go out as several events."""
        if self.kill is not None:
            return
        checked = [_context_source(source) for source in sources]
        agent = self._agent(agent_id)
        for at in range(0, len(checked), _MAX_SOURCES):
            part = checked[at : at + _MAX_SOURCES]
            self._emit(
                "context.assembled", agent, {"sources": [s.model_dump(exclude_none=True) for s in part]}
            )

    async def remember(self, store: str, key: str, content: Any, *, agent_id: str | None = None) -> None:
        """Report a write of `content` (text or JSON-like) to memory `store` under `key`: only its
        fingerprints leave the process."""
        self.check()
        self._memory("memory.written", store, key, content, agent_id)

    async def recall(self, store: str, key: str, content: Any, *, agent_id: str | None = None) -> None:
        """Report that `content` was read back from memory `store` under `key` (its fingerprints only)."""
        self.check()
        self._memory("memory.read", store, key, content, agent_id)

    def _memory(self, kind: str, store: str, key: str, content: Any, agent_id: str | None) -> None:
        fields = {"store": clip(store, _MAX_NAME), "key": clip(key, _MAX_NAME)}
        agent = self._agent(agent_id)
        if _large(content):
            self._emit_later(
                kind,
                agent,
                fields,
                content,
                lambda c: {"fingerprints": _content_fingerprints(c, cooperative=True) or []},
            )
        else:
            self._emit(kind, agent, {**fields, "fingerprints": _content_fingerprints(content) or []})

    async def heartbeat(self) -> None:
        self._emit("heartbeat", self.agent_id, {"in_call_since_ms": self._in_call_since()})

    def _in_call_since(self) -> int | None:
        return min(self._open_calls.values(), default=None)

    def _call_began(self, call: object) -> None:
        """A guarded call is running: while it does, a heartbeat every `call_heartbeat_s` says since when,
        so a long call is not taken for a session gone silent."""
        self._open_calls[id(call)] = self._guard.now_ms()
        interval = self._guard.call_heartbeat_s
        if interval and not self._beating:
            self._beating = True
            self._guard._background(self._beat_while_in_call(interval))

    def _call_ended(self, call: object) -> None:
        self._open_calls.pop(id(call), None)

    async def _beat_while_in_call(self, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                since = self._in_call_since()
                if since is None or not self._attached or self.kill is not None:
                    return
                self._emit("heartbeat", self.agent_id, {"in_call_since_ms": since})
        finally:
            self._beating = False

    # -- after the fact ---------------------------------------------------------------------------------

    def record_tool(
        self,
        tool_name: str,
        args: Any,
        *,
        result: Any = None,
        error: BaseException | str | None = None,
        latency_ms: float | None = None,
        agent_id: str | None = None,
    ) -> None:
        """Report a tool call that already ran (a framework callback): the same events, digests and
        fingerprints as a guarded call, without the gates. Never raises for a kill."""
        call = ToolCall(self, clip(tool_name, _MAX_NAME), self._agent(agent_id), None, None)
        self._emit(
            "tool.called",
            call.agent_id,
            {
                "gen_ai.tool.name": call.tool_name,
                "gen_ai.tool.call.id": call.call_id,
                "args_digest": canonical_digest(args),
                "args_sketch": sketch(args),
            },
            step=True,
        )
        if latency_ms is not None:
            call._started -= max(0.0, latency_ms) / 1000
        if error is None:
            call.returned(result)
        else:
            call.failed(error)

    def record_turn(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
        context_tokens: int = 0,
        output: Any = None,
        agent_id: str | None = None,
    ) -> None:
        """Report a model call that already ran (a framework callback): turn.started then turn.completed."""
        call = ModelCall(self, clip(model, _MAX_NAME), self._agent(agent_id), None)
        self._emit("turn.started", call.agent_id, {"gen_ai.request.model": call.model}, step=True)
        call.completed(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            context_tokens=context_tokens,
            output=output,
        )

    # -- internals --------------------------------------------------------------------------------------

    def _agent(self, agent_id: str | None) -> str:
        if agent_id is None or agent_id in self._agents:
            return agent_id or self.agent_id
        checked = _checked_id("agent_id", agent_id)
        self._agents.add(checked)
        return checked

    async def _reserve(self, agent_id: str, usd: float) -> Reservation | None:
        gate = self._guard.gate
        assert gate is not None
        answer = await gate.reserve(
            session_id=self.session_id, agent_id=agent_id, tenant_id=self.tenant_id, usd=usd, step=True
        )
        if isinstance(answer, Refusal):
            log.warning("session %s: call refused by the budget gate (%s)", self.session_id, answer.limit)
            raise BudgetExhausted(self.session_id, answer.limit, answer.spent, answer.cap)
        return answer

    def _settle(self, reservation: Reservation | None, usd: float, tokens: int) -> None:
        gate = self._guard.gate
        if reservation is None or gate is None:
            return
        self._on_loop(lambda: self._guard._background(gate.settle(reservation, usd=usd, tokens=tokens)))

    def _envelope(self, kind: str, agent_id: str) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "event_id": os.urandom(16).hex(),
            "session_id": self.session_id,
            "agent_id": agent_id,
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "seq": next(self._seq),
            "event_time_ms": self._guard.now_ms(),
        }

    def _note(self, body: dict[str, Any], step: bool) -> None:
        self._sent_at[body["event_id"]] = time.perf_counter()
        if len(self._sent_at) > _RECENT_EVENTS:
            self._sent_at.popitem(last=False)
        if step:
            self.steps += 1
            self._step_seqs.append(body["seq"])

    def _emit(
        self,
        kind: str,
        agent_id: str,
        fields: dict[str, Any],
        *,
        step: bool = False,
        done: asyncio.Future[None] | None = None,
    ) -> None:
        body = self._envelope(kind, agent_id)
        body.update((k, v) for k, v in fields.items() if v is not None)
        self._note(body, step)
        self._guard.outbox.put(self._key, orjson.dumps(body), done)

    def _emit_later(
        self,
        kind: str,
        agent_id: str,
        fields: dict[str, Any],
        content: Any,
        describe: Callable[[Any], dict[str, Any]],
    ) -> None:
        """Queue an event whose last fields are computed from `content` in a thread (a large result): its
        place in the outbox is kept, so the session's events stay in order."""
        body = self._envelope(kind, agent_id)
        body.update((k, v) for k, v in fields.items() if v is not None)
        self._note(body, False)

        def finish() -> bytes:
            body.update((k, v) for k, v in describe(content).items() if v is not None)
            return orjson.dumps(body)

        loop = self._guard.loop
        assert loop is not None

        def queue() -> None:
            future: asyncio.Future[bytes] = loop.run_in_executor(None, finish)
            self._guard.outbox.put(self._key, future)

        self._on_loop(queue)

    def _on_loop(self, fn: Callable[[], object]) -> None:
        loop = self._guard.loop
        assert loop is not None
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

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
        self._interrupt_threads()
        self._killed.set()
        log.warning("session %s killed by %s: %s", self.session_id, command.detector, command.reason)
        for callback in list(self._on_kill_callbacks):
            try:
                callback(command)
            except Exception:
                log.exception("an on_kill callback of session %s failed", self.session_id)
        if not self._maybe_stopped():
            self._acknowledge("stopping")

    def _maybe_stopped(self) -> bool:
        """Acknowledge `stopped` once the kill's guarded work has all ended; True when it has."""
        if self.kill is None or self._ack_outcome == "stopped":
            return self._ack_outcome == "stopped"
        if self._runs or self._threads or (self._attached and not self._managed):
            return False
        self._acknowledge("stopped")
        return True

    def _acknowledge(self, outcome: Literal["stopping", "stopped"]) -> None:
        assert self.kill is not None
        self._ack_outcome = outcome
        loop = self._guard.loop
        assert loop is not None
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(self._ack_sent)
        self._acks.append(done)
        if outcome == "stopped":
            log.info("session %s: the guarded work has ended; kill acknowledged", self.session_id)
        fields: dict[str, Any] = {"command_id": self.kill.command_id, "outcome": outcome}
        if self.kill_latency_ms is not None:
            fields["kill_latency_ms"] = self.kill_latency_ms
        self._emit("control.ack", self.agent_id, fields, done=done)

    def _ack_sent(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("could not acknowledge kill of session %s: %s", self.session_id, done.exception())

    # -- sync runs in threads -----------------------------------------------------------------------------

    def _thread_started(self, *, interruptible: bool) -> None:
        """A sync call or run begins in the current thread (called from that thread)."""
        with self._interrupt_lock:
            self._threads += 1
            if interruptible:
                tid = threading.get_ident()
                self._interruptible[tid] = self._interruptible.get(tid, 0) + 1
                self._managed = True

    def _thread_ended(self, *, interruptible: bool) -> None:
        with self._interrupt_lock:
            self._threads -= 1
            if interruptible:
                tid = threading.get_ident()
                left = self._interruptible[tid] - 1
                if left:
                    self._interruptible[tid] = left
                else:
                    del self._interruptible[tid]
                    # An interrupt injected after the run's code returned must not fire later, elsewhere.
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
        self._on_loop(self._maybe_stopped)

    def _interrupt_threads(self) -> None:
        # CPython gives a thread that is still starting its creator's id until it runs: an interrupt sent
        # then could hit the new thread instead (and hang its creator in Thread.start). So interrupt only
        # while no thread is starting (the limbo lock keeps any from starting meanwhile); else retry soon.
        with self._interrupt_lock, threading._active_limbo_lock:  # type: ignore[attr-defined]
            if threading._limbo:  # type: ignore[attr-defined]
                retry = True
            else:
                retry = False
                for tid in self._interruptible:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(tid), ctypes.py_object(_Interrupt)
                    )
        if retry and self._interruptible:
            loop = self._guard.loop
            assert loop is not None
            loop.call_later(0.001, self._interrupt_threads)


class ToolCall:
    """A tool call that passed the gates; report how it ended with `returned` or `failed` (once)."""

    def __init__(
        self,
        session: GuardedSession,
        tool_name: str,
        agent_id: str,
        probe: tuple[tuple[str, str], int] | None,
        reservation: Reservation | None,
    ) -> None:
        self._session = session
        self.tool_name = tool_name
        self.agent_id = agent_id
        self.call_id = os.urandom(16).hex()
        self._probe = probe
        self._reservation = reservation
        self._started = time.perf_counter()
        self._ended = False

    def returned(self, result: Any = None) -> None:
        """The tool returned `result`: tool.returned with its digest and fingerprints (large results are
        fingerprinted in a thread)."""
        if self._end(ok=True):
            return
        fields = self._fields("ok", None)
        if _large(result):
            self._session._emit_later(
                "tool.returned",
                self.agent_id,
                fields,
                result,
                lambda r: dict(
                    zip(("result_digest", "fingerprints"), _describe_result(r, cooperative=True), strict=True)
                ),
            )
        else:
            result_digest, prints = _describe_result(result)
            self._session._emit(
                "tool.returned",
                self.agent_id,
                {**fields, "result_digest": result_digest, "fingerprints": prints},
            )

    def failed(self, error: BaseException | str) -> None:
        """The tool raised `error` (or was stopped): tool.returned with status error and the error's class."""
        # A stop says nothing about the tool, so a probing circuit is left for the next call to decide.
        tool_fault = isinstance(error, str | Exception)
        if self._end(ok=False if tool_fault else None):
            return
        name = error if isinstance(error, str) else type(error).__name__
        self._session._emit("tool.returned", self.agent_id, self._fields("error", clip(name, _MAX_NAME)))

    def _end(self, *, ok: bool | None) -> bool:
        if self._ended:
            return True
        self._ended = True
        self._session._call_ended(self)
        if self._probe is not None:
            self._session._guard.tool_circuits.settle(self._probe, ok=ok)
        self._session._settle(self._reservation, 0.0, 0)
        return False

    def _fields(self, status: str, error_type: str | None) -> dict[str, Any]:
        return {
            "gen_ai.tool.name": self.tool_name,
            "gen_ai.tool.call.id": self.call_id,
            "status": status,
            "error.type": error_type,
            "latency_ms": (time.perf_counter() - self._started) * 1000,
        }


class ModelCall:
    """A model call that passed the gates; report how it ended with `completed` or `failed` (once)."""

    def __init__(
        self, session: GuardedSession, model: str, agent_id: str, reservation: Reservation | None
    ) -> None:
        self._session = session
        self.model = model
        self.agent_id = agent_id
        self._reservation = reservation
        self._ended = False

    def completed(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
        context_tokens: int = 0,
        output: Any = None,
    ) -> None:
        """The model answered: turn.completed with its usage; the reservation is replaced by `cost_usd`."""
        if self._ended:
            return
        self._ended = True
        self._session._call_ended(self)
        usd = _usd("cost_usd", cost_usd)
        fields: dict[str, Any] = {
            "gen_ai.request.model": self.model,
            "gen_ai.usage.input_tokens": _count("input_tokens", input_tokens),
            "gen_ai.usage.output_tokens": _count("output_tokens", output_tokens),
            "cost_usd": usd,
            "context_tokens": _count("context_tokens", context_tokens),
            "output_digest": None if output is None else digest(output),
        }
        self._session._settle(self._reservation, usd, input_tokens + output_tokens)
        self._session._emit("turn.completed", self.agent_id, fields)

    def failed(self, error: BaseException | str | None = None) -> None:
        """The model call raised or was stopped: turn.completed with no usage; the reservation is released."""
        del error  # the turn event has no error field; the failure shows as a turn without usage
        self.completed()


class TurnUsage:
    """The usage of one turn; `record()` it before the turn's block ends."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}

    def record(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float = 0.0,
        context_tokens: int = 0,
        output: Any = None,
    ) -> None:
        self.usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "context_tokens": context_tokens,
            "output": output,
        }


class Turn(TurnUsage):
    """One guarded LLM turn; call `record()` with the usage before the block ends."""

    def __init__(self, session: GuardedSession, model: str, estimate_usd: float | None = None) -> None:
        super().__init__()
        self._session = session
        self.model = model
        self._estimate = estimate_usd
        self._call: ModelCall | None = None

    async def call(self, work: Awaitable[T]) -> T:
        """Await the model call inside the turn so that a kill cancels it."""
        return await self._session._in_call(work)

    async def __aenter__(self) -> Self:
        self._call = await self._session.model_started(self.model, estimate_usd=self._estimate)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._call is not None
        self._call.completed(**self.usage)
