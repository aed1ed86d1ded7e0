"""Tool circuits: a signed tool-scope command switches a tool off for the whole agent process, for a while.

The circuit logic is tested directly with an injected clock; one integration test shows the SDK obeying a
command read from the control topic of a real broker.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from agents_contract import (
    AgentGuard,
    CommandSigner,
    KillCommand,
    ToolCircuitOpen,
    ToolCircuits,
    canonical_digest,
    encode_command,
    fingerprints,
)
from tests.waiting import wait_for

if TYPE_CHECKING:
    from tests.conftest import Broker

KEY = "k" * 32
HONEST = CommandSigner(KEY)
T0_MS = 1_700_000_000_000


class Clock:
    def __init__(self, ms: int = T0_MS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def tool_command(
    circuit: str,
    generation: int,
    *,
    tool: str = "search",
    open_ms: int | None = 30_000,
    issued_at_ms: int = T0_MS,
    signer: CommandSigner | None = HONEST,
    tenant: str | None = None,
) -> KillCommand:
    evidence: dict[str, Any] = {"circuit": circuit, "generation": generation}
    if open_ms is not None and circuit == "open":
        evidence["open_ms"] = open_ms
    command = KillCommand(
        command_id=f"circuit-{tool}-{circuit}-{generation}",
        scope="tool",
        target=tool,
        reason="error rate over 50% across sessions",
        detector="tool_circuit",
        evidence=evidence,
        issued_at_ms=issued_at_ms,
        tenant_id=tenant,
    )
    return signer.sign(command) if signer else command


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def circuits(clock: Clock) -> ToolCircuits:
    return ToolCircuits(CommandSigner(KEY), clock=clock)


def test_open_circuit_refuses_until_half_open_then_one_probe_closes_it(
    circuits: ToolCircuits, clock: Clock
) -> None:
    assert circuits.admit("search") is None
    assert circuits.apply(tool_command("open", 1))
    assert circuits.state("search") == "open"
    with pytest.raises(ToolCircuitOpen) as refused:
        circuits.admit("search")
    assert (refused.value.tool, refused.value.until_ms) == ("search", T0_MS + 30_000)
    assert circuits.admit("fetch") is None  # other tools are not affected

    clock.ms = T0_MS + 30_000
    assert circuits.state("search") == "half_open"
    probe = circuits.admit("search")
    assert probe is not None
    # One probe at a time: the next caller is refused while it runs.
    with pytest.raises(ToolCircuitOpen):
        circuits.admit("search")
    circuits.settle(probe, ok=True)
    assert circuits.state("search") == "closed"
    assert circuits.admit("search") is None


def test_a_failed_probe_reopens_the_circuit_for_open_ms_more(circuits: ToolCircuits, clock: Clock) -> None:
    circuits.apply(tool_command("open", 1, open_ms=10_000))
    clock.ms = T0_MS + 15_000
    probe = circuits.admit("search")
    assert probe is not None
    circuits.settle(probe, ok=False)
    with pytest.raises(ToolCircuitOpen) as refused:
        circuits.admit("search")
    assert refused.value.until_ms == T0_MS + 25_000

    clock.ms = T0_MS + 25_000
    probe = circuits.admit("search")
    assert probe is not None
    circuits.settle(probe, ok=True)
    assert circuits.state("search") == "closed"


def test_an_inconclusive_probe_lets_the_next_call_probe(circuits: ToolCircuits, clock: Clock) -> None:
    circuits.apply(tool_command("open", 1))
    clock.ms = T0_MS + 30_000
    probe = circuits.admit("search")
    assert probe is not None
    circuits.settle(probe, ok=None)  # cancelled, or its session was killed
    assert circuits.state("search") == "half_open"
    assert circuits.admit("search") == probe


def test_a_close_command_closes_at_once_and_a_newer_open_reopens(circuits: ToolCircuits) -> None:
    circuits.apply(tool_command("open", 3))
    assert circuits.apply(tool_command("closed", 3))
    assert circuits.admit("search") is None
    assert circuits.apply(tool_command("open", 4))
    assert circuits.state("search") == "open"
    assert circuits.apply(tool_command("closed", 9))
    assert circuits.state("search") == "closed"


def test_older_generations_and_redeliveries_are_ignored(circuits: ToolCircuits) -> None:
    circuits.apply(tool_command("open", 5))
    assert not circuits.apply(tool_command("closed", 4))
    assert not circuits.apply(tool_command("open", 4, open_ms=1))
    assert not circuits.apply(tool_command("open", 5, open_ms=1))  # redelivered: no new open period
    assert circuits.state("search") == "open"
    with pytest.raises(ToolCircuitOpen) as refused:
        circuits.admit("search")
    assert refused.value.until_ms == T0_MS + 30_000

    circuits.apply(tool_command("closed", 5))
    # The open that this close answered, redelivered after it (a worker replaying), stays ignored.
    assert not circuits.apply(tool_command("open", 5))
    assert circuits.state("search") == "closed"


def test_a_close_read_before_its_open_keeps_the_open_from_applying(circuits: ToolCircuits) -> None:
    assert not circuits.apply(tool_command("closed", 2))
    assert not circuits.apply(tool_command("open", 2))
    assert circuits.state("search") == "closed"


def test_a_command_arriving_during_a_probe_wins_over_its_outcome(
    circuits: ToolCircuits, clock: Clock
) -> None:
    circuits.apply(tool_command("open", 1))
    clock.ms = T0_MS + 30_000
    probe = circuits.admit("search")
    assert probe is not None
    circuits.apply(tool_command("open", 2, issued_at_ms=clock.ms))
    circuits.settle(probe, ok=True)
    assert circuits.state("search") == "open"


@pytest.mark.parametrize(
    "command",
    [
        tool_command("open", 1, signer=None),
        tool_command("open", 1, signer=CommandSigner("f" * 32)),
        tool_command("open", 1).model_copy(update={"target": "fetch"}),
        tool_command("open", 1).model_copy(update={"evidence": {"circuit": "open", "generation": 1}}),
    ],
    ids=["unsigned", "other-key", "tampered-target", "tampered-evidence"],
)
def test_forged_and_unsigned_commands_open_nothing(circuits: ToolCircuits, command: KillCommand) -> None:
    assert not circuits.apply(command)
    assert circuits.state("search") == circuits.state("fetch") == "closed"
    assert circuits.admit(command.target) is None


@pytest.mark.parametrize(
    "evidence",
    [
        {},
        {"circuit": "open", "generation": 1},
        {"circuit": "open", "generation": "1", "open_ms": 1000},
        {"circuit": "open", "generation": True, "open_ms": 1000},
        {"circuit": "open", "generation": 1, "open_ms": -5},
        {"circuit": "half", "generation": 1, "open_ms": 1000},
    ],
)
def test_signed_commands_without_valid_circuit_evidence_change_nothing(
    circuits: ToolCircuits, evidence: dict[str, Any]
) -> None:
    command = HONEST.sign(tool_command("open", 1, signer=None).model_copy(update={"evidence": evidence}))
    assert not circuits.apply(command)
    assert circuits.state("search") == "closed"


def test_session_scope_commands_are_not_circuit_commands(circuits: ToolCircuits) -> None:
    command = HONEST.sign(tool_command("open", 1, signer=None).model_copy(update={"scope": "session"}))
    assert not circuits.apply(command)
    assert circuits.state("search") == "closed"


@pytest.mark.integration
async def test_a_signed_tool_command_on_the_control_topic_switches_the_tool_off(
    broker: Broker, redis_url: str
) -> None:
    # The broker-side tools, imported here so that the unit tests above need nothing but the contract.
    from streams import RecordProducer, TopicReader, TopicSpec, ensure_topics
    from tests.conftest import agent_redis

    prefix = f"sdk-guards-{secrets.token_hex(4)}"
    events, control = f"agent.events-{prefix}", f"agent.control-{prefix}"
    worker = broker.client_security
    specs = [TopicSpec(t, 2, 1, 3_600_000) for t in (events, control)]
    await ensure_topics(broker.bootstrap, specs, security=worker)
    key = secrets.token_hex(32)
    honest, forger = CommandSigner(key), CommandSigner("f" * 32)
    page = " ".join(f"record {i} of the customer ledger for alice" for i in range(8))
    ran: list[int] = []

    async def search(n: int) -> str:
        ran.append(n)
        return page

    guard = AgentGuard(
        bootstrap=broker.bootstrap,
        redis_url=agent_redis(redis_url),
        kafka_security=broker.agent_security or None,
        signing_key=key,
        idempotent=broker.idempotent,
        events_topic=events,
        control_topic=control,
    )
    async with (
        guard,
        guard.session("s-circuit", agent_id="a1", tenant_id="t", user_id="u") as session,
        RecordProducer(broker.bootstrap, idempotent=broker.idempotent, security=worker) as producer,
    ):
        assert await session.call_tool("search", {"q": " Alice  Ledger", "page": None}, search, 1) == page
        await session.remember("notes", "k-1", page)
        await session.recall("notes", "k-1", {"text": page})

        def command(circuit: str, signer: CommandSigner) -> bytes:
            return encode_command(tool_command(circuit, 1, issued_at_ms=guard.now_ms(), signer=signer))

        # One partition, in order: once the honest open is read, the forged one before it was too.
        for raw in (command("open", forger), command("open", honest)):
            await (await producer.send(control, b"search", raw, partition=0))

        async def opened() -> bool:
            return guard.tool_circuits.state("search") == "open"

        await wait_for("the search circuit to open", opened)
        assert guard.forged_commands == 1
        steps = session.steps
        with pytest.raises(ToolCircuitOpen):
            await session.call_tool("search", {"q": "alice ledger"}, search, 2)
        assert ran == [1]
        assert session.steps == steps
        assert not session.killed  # a tool command stops the tool, not the session

        await (await producer.send(control, b"search", command("closed", honest), partition=0))

        async def closed() -> bool:
            return guard.tool_circuits.state("search") == "closed"

        await wait_for("the search circuit to close", closed)
        assert await session.call_tool("search", {"q": "alice ledger"}, search, 3) == page

    bodies: list[dict[str, Any]] = []
    async with TopicReader(broker.bootstrap, events, security=worker) as reader:

        async def all_published() -> bool:
            bodies.extend(orjson.loads(value or b"{}") for _, value, _ in await reader.read())
            return any(body["kind"] == "session.ended" for body in bodies)

        await wait_for("the session's events", all_published)
    kinds = [body["kind"] for body in bodies]
    # The refused call published nothing: two calls ran, two were reported.
    assert kinds.count("tool.called") == kinds.count("tool.returned") == 2
    called = [body for body in bodies if body["kind"] == "tool.called"]
    assert {body["args_digest"] for body in called} == {canonical_digest({"q": "alice ledger"})}
    expected = fingerprints(page)
    assert expected
    for kind in ("tool.returned", "memory.written"):
        assert all(body["fingerprints"] == expected for body in bodies if body["kind"] == kind)
    (read,) = [body for body in bodies if body["kind"] == "memory.read"]
    assert set(read["fingerprints"]) & set(expected)
    assert "alice" not in orjson.dumps(bodies).decode()


def test_a_tenants_circuit_refuses_the_tool_to_that_tenant_only(circuits: ToolCircuits) -> None:
    assert circuits.apply(tool_command("open", 1, tenant="noisy"))
    with pytest.raises(ToolCircuitOpen):
        circuits.admit("search", "noisy")
    assert circuits.admit("search", "quiet") is None
    assert circuits.state("search", "quiet") == "closed"
    # A fleet-wide circuit refuses it to everyone.
    assert circuits.apply(tool_command("open", 1))
    with pytest.raises(ToolCircuitOpen):
        circuits.admit("search", "quiet")


def test_a_session_command_reads_and_verifies_as_before_tenant_scoped_commands() -> None:
    from agents_contract import encode_command

    command = tool_command("open", 1)
    assert b"tenant_id" not in encode_command(command)
    assert HONEST.verify(command)
    scoped = tool_command("open", 1, tenant="noisy")
    assert b'"tenant_id":"noisy"' in encode_command(scoped)
    assert HONEST.verify(scoped)
    assert not HONEST.verify(scoped.model_copy(update={"tenant_id": "other"}))


def test_no_command_switches_a_tool_off_for_longer_than_the_sdks_maximum(clock: Clock) -> None:
    circuits = ToolCircuits(CommandSigner(KEY), clock=clock, max_open_s=600)
    # Signed, but asking for 31 years.
    assert circuits.apply(tool_command("open", 1, open_ms=31 * 365 * 86_400_000))
    with pytest.raises(ToolCircuitOpen) as refused:
        circuits.admit("search")
    assert refused.value.until_ms == T0_MS + 600_000
    # Or for a normal period from an issue time far in the future.
    assert circuits.apply(tool_command("open", 2, issued_at_ms=T0_MS + 10**12))
    with pytest.raises(ToolCircuitOpen) as refused:
        circuits.admit("search")
    assert refused.value.until_ms == T0_MS + 600_000
    assert circuits.clamped == 2
    clock.ms = T0_MS + 600_000
    assert circuits.state("search") == "half_open"
