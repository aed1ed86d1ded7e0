"""Tool circuits: a signed `tool`-scope command switches a tool off for the agent process, for a while."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agents_contract._commands import CommandSigner, KillCommand

log = logging.getLogger("tripwire.sdk")

MAX_OPEN_S = 3_600.0
"""The longest an SDK keeps a tool switched off after one command, whatever the command says."""


class ToolCircuitOpen(RuntimeError):
    """Raised for a tool whose circuit Tripwire opened; the tool did not run. An ordinary error on purpose:
    the model may be told the tool is unavailable and do without it. `until_ms` is when the circuit
    half-opens (already past while another call is probing it: retry shortly)."""

    def __init__(self, tool: str, until_ms: int) -> None:
        super().__init__(f"tool {tool} is switched off by Tripwire until {until_ms} ms")
        self.tool = tool
        self.until_ms = until_ms


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

    def __init__(
        self,
        signer: CommandSigner,
        *,
        clock: Callable[[], float] = time.time,
        max_open_s: float = MAX_OPEN_S,
    ) -> None:
        if not 0 < max_open_s <= 7 * 86_400:
            raise ValueError(f"max_open_s must be above 0 and at most a week, not {max_open_s!r}")
        self._signer = signer
        self._clock = clock
        self._max_open_ms = int(max_open_s * 1000)
        self.clamped = 0
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
            # Whatever the command says (a long period, or an issue time in the future), the tool is off
            # for at most `max_open_s` from now: a command is signed, not necessarily sane.
            now = self._now_ms()
            limit = now + self._max_open_ms
            if open_ms > self._max_open_ms or command.issued_at_ms + open_ms > limit:
                self.clamped += 1
                log.warning(
                    "tool command %s opens %s for %d ms from %d; held to the SDK's maximum of %d ms from now",
                    command.command_id,
                    tool,
                    open_ms,
                    command.issued_at_ms,
                    self._max_open_ms,
                )
            open_ms = min(open_ms, self._max_open_ms)
            until = min(command.issued_at_ms + open_ms, limit)
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
