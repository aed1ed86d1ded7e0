"""The worker's writes to the Redis fence, kept apart from the kill path so that Redis going away slows
nothing and loses nothing.

A kill is fenced before it is published whenever Redis answers (an agent attaching in between finds it
either way). When Redis does not answer, the kill still goes out on the control topic at once, and its
fence write waits here to be retried with backoff until Redis is back; meanwhile the worker says so: a gauge
(`tripwire_fence_up`), a count of the kills waiting to be fenced, and one critical alert that resolves itself
when the fence has caught up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from prometheus_client import Counter, Gauge

from agents_contract import CommandSigner, ContractError, Fence, FenceError, KillCommand, parse_command
from agents_contract._security import PLAINTEXT, KafkaSecurity
from sinks import Alert
from streams._config import redacted_url

log = logging.getLogger("tripwire.fence")

FENCE_UP = Gauge("tripwire_fence_up", "1 while this worker's last write to the Redis fence succeeded")
FENCE_PENDING = Gauge("tripwire_fence_pending", "Kills sent on the control topic and not yet in the fence")
FENCE_ERRORS = Counter("tripwire_fence_errors_total", "Failed writes to the Redis fence (retried)")
FENCE_RESTORED = Counter(
    "tripwire_fence_restored_total", "Kills put back into a fence Redis had lost, read from the control topic"
)

FENCE_DOWN = "fence_unreachable"
# How long one fence write may take on the kill path before the kill goes out without it.
_WRITE_TIMEOUT_S: Final = 2.0
_BACKOFF_CAP_S: Final = 10.0

Page = Callable[[Alert], Awaitable[None]]


class FenceKeeper:
    def __init__(
        self,
        fence: Fence,
        *,
        app_id: str,
        redis_url: str,
        page: Page,
        clock: Callable[[], int],
        signer: CommandSigner | None = None,
    ):
        self._fence = fence
        # Each kill is fenced in every signed form the agents may read (Ed25519, and HMAC while compatible).
        self._signer = signer
        self._app_id = app_id
        self._where = redacted_url(redis_url)
        self._page = page
        self._clock = clock
        # Kills waiting to be fenced, by session (the first kill of a session is the one the fence keeps).
        self.pending: dict[str, KillCommand] = {}
        self._down_since_ms = 0
        self._next_try = 0.0
        self._failures = 0
        FENCE_UP.set(1)
        FENCE_PENDING.set(0)

    @property
    def up(self) -> bool:
        return not self._down_since_ms

    async def write(self, commands: list[KillCommand]) -> list[KillCommand]:
        """Fence these kills now if Redis answers in time; otherwise keep them for `retry`. Returns the
        kills to publish: bound to their sessions' current epochs where Redis said (a session released
        before has one past 0). Never raises."""
        if not commands:
            return commands
        if not self.up:
            # Already known to be down: the kill path does not wait for it again.
            self._hold(commands)
            return commands
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                commands = await self._bind(commands)
                await self._fence.kill(self._forms(commands))
        except (FenceError, OSError, TimeoutError) as exc:
            self._hold(commands)
            await self._went_down(exc)
        return commands

    async def _bind(self, commands: list[KillCommand]) -> list[KillCommand]:
        signer = self._signer
        if signer is None or not signer.ed25519:
            return commands  # HMAC-signed commands carry no epoch
        epochs = await self._fence.epochs([command.target for command in commands])
        return [signer.bind(command, epoch) for command, epoch in zip(commands, epochs, strict=True)]

    async def retry(self) -> None:
        """Write the kills waiting to be fenced, with backoff; called by the worker's timer. Never raises."""
        if not self.pending and self.up:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_try:
            return
        try:
            if self.pending:
                async with asyncio.timeout(_WRITE_TIMEOUT_S):
                    waiting = await self._bind(list(self.pending.values()))
                    await self._fence.kill(self._forms(waiting))
            else:
                await asyncio.wait_for(self._fence.ping(), timeout=_WRITE_TIMEOUT_S)
        except (FenceError, OSError, TimeoutError) as exc:
            self._failures += 1
            self._next_try = loop.time() + min(_BACKOFF_CAP_S, 0.5 * 2 ** min(self._failures, 8))
            FENCE_ERRORS.inc()
            log.error("the Redis fence at %s is still unreachable (%s); retrying", self._where, exc)
            return
        fenced = len(self.pending)
        self.pending.clear()
        FENCE_PENDING.set(0)
        await self._came_back(fenced)

    def _forms(self, commands: list[KillCommand]) -> list[KillCommand]:
        if self._signer is None:
            return commands
        return [form for command in commands for form in self._signer.variants(command)]

    async def rebuild_if_lost(
        self, bootstrap: str, control_topic: str, *, security: KafkaSecurity = PLAINTEXT
    ) -> int:
        """When Redis has lost the fence (restarted without persistence, failed over to an empty replica),
        put back every kill of the control topic that is still in force: the last record per session,
        unless a `tripwire release` tombstone followed it, younger than the fence's TTL. Returns how many
        kills were missing. Called every few seconds by the worker; never raises."""
        fence = self._fence
        try:
            if await asyncio.wait_for(fence.intact(), timeout=_WRITE_TIMEOUT_S):
                return 0
            now = self._clock()
            kills, epochs = await read_kills(bootstrap, control_topic, security=security)
            ttl_ms = fence.ttl_s * 1000
            # Only kills that verify go back: anything else on the control topic was not a worker's, and
            # re-signing it in another form would launder it.
            live = [
                (form, (_until(command, ttl_ms) - now) // 1000)
                for command in kills.values()
                if now < _until(command, ttl_ms) and (self._signer is None or self._signer.verify(command))
                for form in self._forms([command])
            ]
            # A kill issued after a release names its epoch too (the tombstone may be compacted away).
            for command, _ in live:
                if command.epoch:
                    epochs[command.target] = max(command.epoch, epochs.get(command.target, 0))
            # Epochs first: an agent attaching meanwhile must not take a kill from before a release.
            await fence.restore_epochs(epochs)
            restored = await fence.restore(live)
            await fence.mark_intact()
        except (FenceError, OSError, TimeoutError) as exc:
            log.debug("fence check skipped: %r", exc)  # an unreachable Redis is reported by `retry`
            return 0
        except Exception:
            log.exception("could not rebuild the fence from %s; trying again", control_topic)
            return 0
        FENCE_RESTORED.inc(restored)
        if restored:
            log.critical(
                "the Redis fence at %s had lost its data: %d kills still in force restored from %s",
                self._where,
                restored,
                control_topic,
            )
        else:
            log.info("the Redis fence at %s is complete (%d kills in force)", self._where, len(live))
        return restored

    def _hold(self, commands: list[KillCommand]) -> None:
        for command in commands:
            self.pending.setdefault(command.target, command)
        FENCE_PENDING.set(len(self.pending))

    async def _went_down(self, exc: BaseException) -> None:
        FENCE_ERRORS.inc()
        FENCE_UP.set(0)
        self._failures = 1
        self._next_try = asyncio.get_running_loop().time() + 0.5
        self._down_since_ms = self._clock()
        log.error(
            "cannot write to the Redis fence at %s (%s): kills still go out on the control topic, "
            "their fence writes are retried",
            self._where,
            exc,
        )
        await self._alert("firing")

    async def _came_back(self, fenced: int) -> None:
        FENCE_UP.set(1)
        self._failures = 0
        if self._down_since_ms:
            log.warning("the Redis fence at %s is back; %d waiting kills fenced", self._where, fenced)
            await self._alert("resolved", fenced=fenced)
        self._down_since_ms = 0

    async def _alert(self, status: str, *, fenced: int = 0) -> None:
        now = self._clock()
        down_s = (now - self._down_since_ms) / 1000
        reason = (
            f"worker {self._app_id} cannot reach the Redis fence at {self._where}: kills are sent on the "
            f"control topic but an agent attaching later will not find them until Redis is back"
            if status == "firing"
            else f"worker {self._app_id} reaches the Redis fence again after {down_s:.0f} s; {fenced} kills "
            f"that waited were fenced"
        )
        alert = Alert(
            alert_id=f"{FENCE_DOWN}-{self._app_id}-{self._down_since_ms}",
            severity="critical",
            failure_class="tripwire_degraded",
            detector=FENCE_DOWN,
            action="warned",
            status="firing" if status == "firing" else "resolved",
            session_id="",
            tenant_id="",
            user_id="",
            agent_id="",
            reason=reason,
            observed=down_s,
            threshold=0,
            event_id="",
            event_time_ms=self._down_since_ms,
            detected_at_ms=now,
            evidence={"redis": self._where, "pending_kills": len(self.pending)},
        )
        try:
            await self._page(alert)
        except Exception as exc:  # the page is best effort here; the log line and the gauge are not
            log.error("could not send the fence alert: %r", exc)


def _until(command: KillCommand, ttl_ms: int) -> int:
    """When a kill stops being in force: its expiry, or the fence's TTL after it was issued."""
    ends = command.issued_at_ms + ttl_ms
    return ends if command.expires_at_ms is None else min(ends, command.expires_at_ms)


async def read_kills(
    bootstrap: str, control_topic: str, *, security: KafkaSecurity = PLAINTEXT
) -> tuple[dict[str, KillCommand], dict[str, int]]:
    """The session kills in force on the control topic (per session its last record, none where that is a
    release tombstone or not a command), and the epochs the releases started (their tombstones' header)."""
    from streams import TopicReader

    kills: dict[str, KillCommand] = {}
    epochs: dict[str, int] = {}
    async with TopicReader(bootstrap, control_topic, security=security) as reader:
        await reader.mark_end()
        while not await reader.caught_up():
            for key, value, headers in await reader.read(timeout_ms=200):
                if key is None:
                    continue
                session_id = key.decode(errors="replace")
                if value is None:
                    kills.pop(session_id, None)
                    epoch = _header_epoch(headers)
                    if epoch:
                        epochs[session_id] = max(epoch, epochs.get(session_id, 0))
                    continue
                try:
                    command = parse_command(value)
                except ContractError:
                    continue
                if command.scope == "session" and command.target == session_id:
                    kills[session_id] = command
    return kills, epochs


EPOCH_HEADER: Final = "tripwire-epoch"


def _header_epoch(headers: dict[str, bytes]) -> int:
    try:
        return max(0, int(headers.get(EPOCH_HEADER, b"0")))
    except ValueError:
        return 0
