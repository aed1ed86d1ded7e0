"""Operator commands: a manual kill through the same signed path the worker uses, release, reading topics.

`tripwire kill SESSION --reason TEXT` writes the Redis fence, publishes a signed kill on the control topic
and an alert, exactly as a detector verdict does, so an agent cannot tell a manual kill from an automatic
one except by its `detector` ("manual"). `tripwire release SESSION` clears the fence so that an agent can
attach to the session again (the worker still remembers a detector's kill and does not judge that session
again: resume under a new session id to be guarded). `tripwire tail control|alerts|dlq` prints a topic as
JSON lines: kill commands with whether their signature verifies (`verified`), dead letters with their
reason and source offset.
"""

from __future__ import annotations

import base64
import getpass
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from agents_contract import (
    CommandSigner,
    ContractError,
    Fence,
    KillCommand,
    encode_command,
    kill_command_id,
    parse_command,
)
from detectors import FailureClass, wall_clock
from sinks import Alert
from streams._config import Settings, command_signer
from streams._kafka import RecordProducer, TopicReader
from streams.worker._dlq import FORMAT as DEAD_LETTER_FORMAT
from streams.worker._fencing import EPOCH_HEADER

MANUAL = "manual"
TailTopic = Literal["control", "alerts", "dlq"]


async def manual_kill(
    settings: Settings,
    session_id: str,
    reason: str,
    failure_class: FailureClass = FailureClass.RUNAWAY_EXECUTION,
) -> tuple[KillCommand, bool]:
    """Kill a session by hand; returns the command in force and whether this call issued it.

    A session that is already fenced keeps its first kill: that command is published again (agents that
    missed it get another chance), and no new alert is raised.
    """
    signer = command_signer(settings)
    now = wall_clock()
    fence = Fence(settings.redis.url, ttl_s=settings.redis.fence_ttl_s, ed25519=signer.ed25519)
    try:
        # Bound to the session's epoch: agents attached since its last release obey it, older ones not.
        (epoch,) = await fence.epochs([session_id]) if signer.ed25519 else (None,)
        command = signer.sign(
            KillCommand(
                # Each manual kill is its own incident: a session released and killed again pages again.
                command_id=kill_command_id(session_id, f"{MANUAL}@{now}"),
                target=session_id,
                reason=reason,
                detector=MANUAL,
                evidence={"failure_class": failure_class.value, "operator": getpass.getuser()},
                issued_at_ms=now,
                epoch=epoch,
            )
        )
        issued = session_id in await fence.kill(signer.variants(command))
        in_force = command if issued else (await fence.lookup(session_id) or command)
    finally:
        await fence.close()
    key = session_id.encode()
    async with RecordProducer(
        settings.kafka.bootstrap,
        idempotent=settings.kafka.idempotent_producer,
        security=settings.kafka.security,
    ) as out:
        sends = [
            await out.send(settings.topics.control, key, encode_command(form))
            for form in signer.variants(in_force)
        ]
        if issued:
            sends.append(await out.send(settings.topics.alerts, key, _alert(command).to_bytes()))
        for sent in sends:
            await sent
    return in_force, issued


async def release(settings: Settings, session_id: str) -> KillCommand | None:
    """Clear a session's fence, so that an agent may attach to it again; returns the kill it held.

    The release starts the session's next epoch: agents that attach from now on refuse every command
    issued before it, so a captured kill published again cannot stop the session a second time."""
    # Either signed form of the kill will do to say what was released.
    fence = Fence(settings.redis.url, ttl_s=settings.redis.fence_ttl_s, ed25519=True)
    try:
        held = await fence.lookup(session_id)
        epoch = await fence.new_epoch(session_id)
        # A tombstone on the control topic before the fence is cleared: a worker that rebuilds a lost fence
        # from the topic must not bring this kill back, and takes the epoch from its header.
        async with RecordProducer(
            settings.kafka.bootstrap,
            idempotent=settings.kafka.idempotent_producer,
            security=settings.kafka.security,
        ) as out:
            tombstone = await out.send(
                settings.topics.control,
                session_id.encode(),
                None,
                headers={EPOCH_HEADER: str(epoch).encode()},
            )
            await tombstone
        await fence.release(session_id)
    finally:
        await fence.close()
    return held


def _alert(command: KillCommand) -> Alert:
    return Alert(
        alert_id=command.command_id,
        severity="critical",
        failure_class=str(command.evidence["failure_class"]),
        detector=MANUAL,
        action="killed",
        session_id=command.target,
        tenant_id="",
        user_id="",
        agent_id="",
        reason=command.reason,
        observed=0,
        threshold=0,
        event_id="",
        event_time_ms=command.issued_at_ms,
        detected_at_ms=command.issued_at_ms,
        command_id=command.command_id,
        evidence=command.evidence,
    )


async def tail(settings: Settings, which: TailTopic, *, follow: bool) -> AsyncIterator[dict[str, Any]]:
    """The topic's records from the beginning as dicts; without `follow`, stops at the end as of the call."""
    topic = {"control": settings.topics.control, "alerts": settings.topics.alerts, "dlq": settings.topics.dlq}
    signer = command_signer(settings)
    async with TopicReader(
        settings.kafka.bootstrap, topic[which], security=settings.kafka.security
    ) as reader:
        await reader.mark_end()
        while follow or not await reader.caught_up():
            for key, value, headers in await reader.read(timeout_ms=200):
                if value is None and which == "control":
                    # `tripwire release` leaves a tombstone: the session's kill is no longer in force.
                    yield {"key": None if key is None else key.decode(errors="replace"), "released": True}
                    continue
                yield _describe(which, signer, key, value or b"", headers)


def _describe(
    which: TailTopic, signer: CommandSigner, key: bytes | None, value: bytes, headers: dict[str, bytes]
) -> dict[str, Any]:
    row: dict[str, Any] = {"key": None if key is None else key.decode(errors="replace")}
    if which == "dlq":
        row["reason"] = headers.get("tripwire.reason", b"").decode(errors="replace")
        row["source"] = headers.get("tripwire.source", b"").decode(errors="replace")
        try:
            letter = orjson.loads(value)
        except orjson.JSONDecodeError:
            letter = None
        if isinstance(letter, dict) and letter.get("format") == DEAD_LETTER_FORMAT:
            # Metadata only: what the record was and where it came from, never its content.
            # (`source` stays the header's topic/partition/offset string, as `tail` always printed it.)
            return {**row, **{k: v for k, v in letter.items() if k not in ("format", "source", "reason")}}
        # A dead letter written before dead letters kept metadata only (or a raw copy, `worker.dlq_raw`).
        row["raw_base64"] = base64.b64encode(value[:4096]).decode()
        row["raw_bytes"] = len(value)
        return row
    if which == "control":
        try:
            command = parse_command(value)
        except ContractError as exc:
            return {**row, "error": f"not a command: {exc.reason}"}
        return {**row, "verified": signer.verify(command), **command.model_dump()}
    try:
        return {**row, **Alert.from_bytes(value).model_dump()}
    except ValueError as exc:
        return {**row, "error": f"not an alert: {exc}"}
