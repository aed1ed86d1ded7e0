"""The scenario library: recorded-style event streams for every detector, and healthy sessions that must
not fire any.

Each `Scenario` is a list of contract events as agents would publish them (one or more sessions, per-agent
sequence numbers, event times in milliseconds from `T0`), the detector it is written for (None for a
healthy one), and the per-tenant or per-agent overrides it needs (a tenant budget is tried with a small
budget rather than $500 of events). The runaway scenarios trip their own detector first under the default
settings and nothing earlier; the healthy ones look like real work (research with search and fetch, a
planner and a worker talking, memory written and read back by its owner, a retry that succeeds, paging
through results, a context that grows slowly) and trip nothing. The same library feeds the unit tests
(through `tripwire replay`'s code), `tripwire demo` (published to a real broker) and `make bench`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from agents_contract import (
    AgentEvent,
    AgentWaiting,
    Heartbeat,
    MemoryRead,
    MemoryWritten,
    MessageSent,
    SessionEnded,
    SessionStarted,
    ToolCalled,
    ToolReturned,
    TurnCompleted,
    fingerprints,
)

T0: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z; the demo moves every scenario to the present


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@dataclass
class Scenario:
    name: str
    detector: str | None
    events: list[AgentEvent] = field(default_factory=list)
    # A partial `detectors` section (`tenants` / `agents` only) this scenario needs on top of the defaults.
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def sessions(self) -> list[str]:
        return list(dict.fromkeys(e.session_id for e in self.events))


class _Session:
    """Writes one session's events: each agent's own sequence, time moving forward by `at` (seconds)."""

    def __init__(self, scenario: Scenario, session_id: str, *, tenant: str, user: str) -> None:
        self._out = scenario.events
        self.session_id = session_id
        self.tenant = tenant
        self.user = user
        self._seq: dict[str, int] = {}
        self.t = 0.0

    def _env(self, agent: str, at: float | None) -> dict[str, Any]:
        if at is not None:
            self.t = at
        seq = self._seq[agent] = self._seq.get(agent, 0) + 1
        return {
            "event_id": f"{self.session_id}.{agent}.{seq}",
            "session_id": self.session_id,
            "agent_id": agent,
            "tenant_id": self.tenant,
            "user_id": self.user,
            "seq": seq,
            "event_time_ms": T0 + int(self.t * 1000),
        }

    def _add(self, event: AgentEvent, step: float) -> None:
        self._out.append(event)
        self.t += step

    def start(self, agent: str = "agent", *, at: float | None = None) -> None:
        self._add(SessionStarted(**self._env(agent, at), task="scenario"), 0.5)

    def end(self, agent: str = "agent", *, at: float | None = None) -> None:
        self._add(SessionEnded(**self._env(agent, at)), 0.5)

    def tool(
        self,
        name: str,
        args: object,
        result: object = None,
        *,
        agent: str = "agent",
        error: str | None = None,
        prints: list[int] | None = None,
        at: float | None = None,
    ) -> None:
        call = f"c{len(self._out)}"
        self._add(
            ToolCalled(**self._env(agent, at), tool_name=name, call_id=call, args_digest=_digest(name, args)),
            0.3,
        )
        self._add(
            ToolReturned(
                **self._env(agent, None),
                tool_name=name,
                call_id=call,
                status="error" if error else "ok",
                error_type=error,
                result_digest=None if error else _digest(result if result is not None else (name, args)),
                latency_ms=300.0,
                fingerprints=prints,
            ),
            1.0,
        )

    def turn(
        self,
        *,
        agent: str = "agent",
        tokens: int = 1_500,
        cost: float = 0.01,
        context: int = 4_000,
        output: object = None,
        at: float | None = None,
    ) -> None:
        self._add(
            TurnCompleted(
                **self._env(agent, at),
                model="gpt-4.1-mini",
                input_tokens=tokens - tokens // 5,
                output_tokens=tokens // 5,
                cost_usd=cost,
                context_tokens=context,
                output_digest=_digest(output if output is not None else ("turn", self.t, agent)),
            ),
            2.0,
        )

    def message(self, sender: str, receiver: str, content: object, *, at: float | None = None) -> None:
        self._add(
            MessageSent(**self._env(sender, at), to_agent_id=receiver, content_digest=_digest(content)), 1.0
        )

    def wait(self, agent: str, on: str, *, at: float | None = None) -> None:
        self._add(AgentWaiting(**self._env(agent, at), waiting_on_agent_id=on), 1.0)

    def heartbeat(self, agent: str = "agent", *, at: float | None = None) -> None:
        self._add(Heartbeat(**self._env(agent, at)), 1.0)

    def write(
        self, store: str, key: str, text: str, *, agent: str = "agent", at: float | None = None
    ) -> None:
        self._add(
            MemoryWritten(**self._env(agent, at), store=store, key=key, fingerprints=fingerprints(text)), 0.5
        )

    def read(self, store: str, key: str, text: str, *, agent: str = "agent", at: float | None = None) -> None:
        self._add(
            MemoryRead(**self._env(agent, at), store=store, key=key, fingerprints=fingerprints(text)), 0.5
        )


_RECORD = (
    "Customer record for Dana Whitfield, account 4471-2290, lives at 18 Larch Crescent, prefers email "
    "contact, last order was a replacement compressor shipped on the ninth of March"
)
_BOILERPLATE = (
    "Thank you for contacting support. A member of our team will review your request and reply within "
    "one business day. Please keep this reference for your records."
)
_PUBLIC_PAGE = (
    "The quarterly report shows revenue grew eight percent year over year while operating costs stayed "
    "flat, driven mostly by the new subscription tier launched in the spring"
)


class _Library:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tenant = f"{prefix}-acme"
        self.scenarios: list[Scenario] = []

    def scenario(self, name: str, detector: str | None, **overrides: Any) -> Scenario:
        scenario = Scenario(
            f"{'healthy' if detector is None else 'runaway'}-{name}", detector, overrides=overrides
        )
        self.scenarios.append(scenario)
        return scenario

    def session(
        self, scenario: Scenario, suffix: str = "", *, tenant: str | None = None, user: str = "u1"
    ) -> _Session:
        sid = f"{self.prefix}-{scenario.name}{suffix}"
        s = _Session(scenario, sid, tenant=tenant or self.tenant, user=f"{self.prefix}-{user}")
        s.start()
        return s

    def tool(self, name: str) -> str:
        """A tool name of this library's own, so the fleet-wide tool circuits of two runs stay apart."""
        return f"{self.prefix}.{name}"


def _runaways(lib: _Library) -> None:
    s = lib.session(lib.scenario("step-ceiling", "max_steps"))
    for page in range(51):
        s.tool(lib.tool("list_orders"), {"page": page}, {"orders": page})

    s = lib.session(lib.scenario("token-ceiling", "max_tokens"))
    for i in range(5):
        s.turn(tokens=120_000, cost=0.05, context=100_000)
        s.tool(lib.tool("read_chapter"), {"chapter": i})

    s = lib.session(lib.scenario("cost-ceiling", "max_cost_usd"))
    for i in range(4):
        s.turn(tokens=20_000, cost=3.0, context=20_000)
        s.tool(lib.tool("check_draft"), {"draft": i})

    s = lib.session(lib.scenario("same-call-again", "repeated_tool_call"))
    for _ in range(5):
        s.turn()
        s.tool(lib.tool("web_search"), {"q": "acme q3 revenue"}, {"hits": ["a", "b"]})

    # Reworded queries with nothing new coming back: the near-repeat.
    s = lib.session(lib.scenario("reworded-search", "repeated_tool_call"))
    for q in (
        "acme revenue q3",
        "q3 revenue acme",
        "ACME Q3 revenue figures",
        "acme third quarter revenue",
        "revenue of acme in q3",
    ):
        s.tool(lib.tool("web_search"), {"q": q}, {"hits": ["acme-10q.pdf"]})

    s = lib.session(lib.scenario("search-fetch-cycle", "cyclic_pattern"))
    for _ in range(3):
        s.tool(lib.tool("search"), {"q": "pricing"}, {"hits": 3})
        s.tool(lib.tool("fetch"), {"url": "https://example.com/pricing"}, {"status": 200})

    s = lib.session(lib.scenario("reviewer-ping-pong", "agent_ping_pong"))
    for _ in range(4):
        s.message("writer", "reviewer", "here is the draft, please review")
        s.message("reviewer", "writer", "needs another pass on the intro")

    s = lib.session(lib.scenario("same-answer", "no_progress"))
    for i in range(3):
        s.turn(output="I could not find the file.")
        s.tool(lib.tool("ls"), {"dir": f"/tmp/{i}"})

    s = lib.session(lib.scenario("talking-to-itself", "monologue"))
    for _ in range(8):
        s.turn()

    s = lib.session(lib.scenario("timeout-again", "repeated_error"))
    for i in range(3):
        s.tool(lib.tool("crm_lookup"), {"attempt": i}, error="TimeoutError")

    s = lib.session(lib.scenario("spending-fast", "burn_rate"))
    for i in range(6):
        s.turn(tokens=8_000, cost=1.0, context=8_000)
        s.tool(lib.tool("render"), {"frame": i})
    s.end()

    s = lib.session(lib.scenario("all-afternoon", "session_deadline"))
    for i in range(16):
        s.turn(at=i * 240.0)
        s.tool(lib.tool("poll_status"), {"tick": i})
    s.heartbeat(at=3_605.0)

    s = lib.session(lib.scenario("went-quiet", "stall"))
    s.turn()
    s.tool(lib.tool("submit_job"), {"job": 1})
    # ... and nothing more: no end, no heartbeat.

    s = lib.session(lib.scenario("waiting-on-each-other", "deadlock"))
    s.message("planner", "coder", "implement the parser")
    s.wait("coder", "planner")
    s.wait("planner", "coder")
    s.heartbeat("planner")

    s = lib.session(lib.scenario("everything-failing", "error_burst"))
    errors = ("TimeoutError", "ConnectionError")
    for i in range(10):
        s.tool(lib.tool(f"svc{i % 5}"), {"n": i}, error=errors[(i // 5) % 2])

    s = lib.session(lib.scenario("failure-spreads", "error_propagation"))
    for agent, tool in (("fetcher", "fetch"), ("parser", "parse"), ("writer", "write")):
        s.tool(lib.tool(tool), {"by": agent}, agent=agent, error="UpstreamError")

    s = lib.session(lib.scenario("context-jump", "context_blowup"))
    for i, context in enumerate((9_000, 10_000, 11_000, 10_500, 9_500, 64_000)):
        s.turn(context=context)
        s.tool(lib.tool("read"), {"part": i})

    s = lib.session(lib.scenario("write-storm", "memory_write_amplification"))
    for i in range(51):
        s.write("scratch", f"note-{i}", f"intermediate result number {i} of the batch job that writes a lot")
    s.end()

    # Four sessions of one tenant, none near its own ceiling, together past a $2.50 day (each turn below
    # the burn rate's minimum spend).
    big = f"{lib.prefix}-bigspender"
    scenario = lib.scenario(
        "tenant-day", "tenant_daily_budget", tenants={big: {"tenant_daily_budget": {"max_cost_usd": 2.5}}}
    )
    for n in range(4):
        s = lib.session(scenario, f"-{n}", tenant=big, user=f"u{n}")
        for i in range(2):
            s.turn(cost=0.4, at=n * 10.0 + i * 150.0)
            s.tool(lib.tool("analyse"), {"s": n, "i": i})
        s.end()

    buyer = f"{lib.prefix}-buyer"
    scenario = lib.scenario(
        "agent-hour", "agent_budget", agents={buyer: {"agent_budget": {"max_cost_usd": 2.0}}}
    )
    for n in range(3):
        s = lib.session(scenario, f"-{n}")
        for i in range(2):
            s.turn(agent=buyer, cost=0.45, at=n * 10.0 + i * 150.0)
            s.tool(lib.tool("quote"), {"s": n, "i": i}, agent=buyer)
        s.end(buyer)

    # A dependency failing for everybody: no session sees much, the fleet sees 2 errors in 3 calls.
    scenario = lib.scenario("dependency-down", "tool_circuit")
    flaky = lib.tool("payments_api")
    for n in range(8):
        s = lib.session(scenario, f"-{n}", user=f"u{n}")
        s.tool(flaky, {"n": n, "i": 0}, {"ok": n}, at=n * 2.0)
        s.tool(flaky, {"n": n, "i": 1}, error="TimeoutError")
        s.tool(flaky, {"n": n, "i": 2}, error="ConnectionError")
        s.end()

    # A user's record written to memory in one session comes back in another user's tool result.
    scenario = lib.scenario("record-leak", "memory_leak")
    owner = lib.session(scenario, "-owner", user="dana")
    owner.write("crm-notes", "dana/profile", _RECORD)
    owner.end()
    reader = lib.session(scenario, "-reader", user="eve")
    reader.turn(at=30.0)
    reader.tool(
        lib.tool("semantic_search"), {"q": "compressor orders"}, {"hits": 1}, prints=fingerprints(_RECORD)
    )
    reader.end()

    scenario = lib.scenario("key-leak", "memory_namespace_leak")
    owner = lib.session(scenario, "-owner", user="sam")
    owner.write("prefs", "sam/settings", "dark mode on")
    owner.end()
    reader = lib.session(scenario, "-reader", user="kim")
    reader.read("prefs", "sam/settings", "dark mode on", at=30.0)
    reader.end()


def _healthy(lib: _Library) -> None:
    s = lib.session(lib.scenario("research", None))
    for i, topic in enumerate(("market size", "competitors", "pricing", "regulation")):
        s.turn(cost=0.02)
        s.tool(
            lib.tool("web_search"),
            {"q": topic},
            {"hits": topic},
            prints=fingerprints(_PUBLIC_PAGE) if i == 0 else None,
        )
        s.tool(lib.tool("fetch"), {"url": f"https://example.com/{i}"}, {"page": i})
    s.turn(cost=0.03, output="final report")
    s.end()

    s = lib.session(lib.scenario("planner-and-worker", None))
    for i in range(4):
        s.message("planner", "worker", f"task {i}: summarise section {i}")
        s.tool(lib.tool("read_section"), {"n": i}, agent="worker")
        s.turn(agent="worker")
        s.message("worker", "planner", f"summary of section {i}")
    s.end("planner")

    # The user's own memory, written and read back; and a support template every user writes.
    s = lib.session(lib.scenario("own-memory", None), user="dana")
    s.write("crm-notes", "dana/todo", "call the supplier about the replacement compressor delivery date")
    s.write("replies", "dana/ack", _BOILERPLATE)
    s.turn()
    s.read("crm-notes", "dana/todo", "call the supplier about the replacement compressor delivery date")
    s.end()
    s = lib.session(lib.scenario("template-reply", None), user="lee")
    s.write("replies", "lee/ack", _BOILERPLATE, at=5.0)
    s.turn()
    s.end()
    # Public content two users fetched is nobody's private data. (A read of the template would be safe too
    # once both writes are judged; the demo publishes every session at once, so it is left to unit tests.)
    s = lib.session(lib.scenario("public-page", None), user="max")
    s.tool(
        lib.tool("web_search"),
        {"q": "acme quarterly report"},
        {"page": "q"},
        prints=fingerprints(_PUBLIC_PAGE),
        at=10.0,
    )
    s.turn()
    s.end()

    s = lib.session(lib.scenario("retry-then-success", None))
    s.tool(lib.tool("crm_lookup"), {"id": 7}, error="TimeoutError")
    s.tool(lib.tool("crm_lookup"), {"id": 7}, {"name": "x"})
    s.turn()
    s.end()

    s = lib.session(lib.scenario("long-but-bounded", None))
    for i in range(20):
        s.tool(lib.tool("list_files"), {"page": i}, {"files": i})
        if i % 4 == 0:
            s.turn(cost=0.02)
    s.end()

    s = lib.session(lib.scenario("growing-context", None))
    for i in range(10):
        s.turn(context=4_000 + 1_500 * i, cost=0.01)
        s.tool(lib.tool("append"), {"i": i})
    s.end()

    # A file read into a small context: six times the usual size, far below any model's limit.
    s = lib.session(lib.scenario("file-into-context", None))
    for i, context in enumerate((6_000, 6_200, 5_900, 6_100, 6_000, 38_000, 38_500)):
        s.turn(context=context, cost=0.01)
        s.tool(lib.tool("read_file"), {"path": f"src/module_{i}.py"}, {"lines": 400 + i})
    s.end()

    s = lib.session(lib.scenario("hand-off", None))
    s.message("planner", "coder", "write the tests")
    s.wait("planner", "coder")
    s.tool(lib.tool("run_tests"), {"suite": "unit"}, agent="coder")
    s.message("coder", "planner", "tests written and passing")
    s.turn(agent="planner")
    s.end("planner")


def scenario_library(prefix: str = "lib") -> list[Scenario]:
    """Every scenario, its session ids, tenants, users and tools starting with `prefix`."""
    lib = _Library(prefix)
    _runaways(lib)
    _healthy(lib)
    return lib.scenarios


def overrides(scenarios: list[Scenario]) -> dict[str, Any]:
    """The `tenants` and `agents` overrides the scenarios need, as one partial `detectors` section."""
    merged: dict[str, dict[str, Any]] = {"tenants": {}, "agents": {}}
    for scenario in scenarios:
        for scope, table in scenario.overrides.items():
            merged[scope].update(table)
    return {scope: table for scope, table in merged.items() if table}


def in_time_order(scenarios: list[Scenario]) -> Iterator[AgentEvent]:
    """Every event of the scenarios as one recording: by event time, each session's own order kept."""
    events = [e for s in scenarios for e in s.events]
    return iter(sorted(events, key=lambda e: e.event_time_ms))
