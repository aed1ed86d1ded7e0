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
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from agents_contract import (
    AgentEvent,
    AgentWaiting,
    ContextAssembled,
    ContextSource,
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
    canonical_digest,
    encode_event,
    fingerprints,
    sketch,
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
    # What `tripwire replay --expect` should find: the sessions (by id suffix) the default config kills and
    # those it must leave alone. None: every session of a runaway is killed. A scenario whose detector only
    # warns or opens a circuit by default is not labelled.
    killed: tuple[str, ...] | None = None
    spared: tuple[str, ...] = ()
    labelled: bool = True

    @property
    def sessions(self) -> list[str]:
        return list(dict.fromkeys(e.session_id for e in self.events))

    def labels(self) -> dict[str, str]:
        """Session id -> "kill" or "none", as `tripwire replay --expect` reads them."""
        if self.detector is None:
            return dict.fromkeys(self.sessions, "none")
        if not self.labelled:
            return {}
        labels: dict[str, str] = {}
        for sid in self.sessions:
            if self.killed is None or sid.endswith(self.killed):
                labels[sid] = "kill"
            elif sid.endswith(self.spared) and self.spared:
                labels[sid] = "none"
        return labels


class _Session:
    """Writes one session's events: each agent's own sequence, time moving forward by `at` (seconds)."""

    def __init__(self, scenario: Scenario, session_id: str, *, tenant: str, user: str) -> None:
        self.scenario = scenario
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
        text: str | None = None,
        took: float = 0.3,
        at: float | None = None,
    ) -> None:
        """A call and its result `took` seconds later; `text` is the result as the agent read it (its digest
        and fingerprints go out, as the SDK sends them)."""
        call = f"c{len(self._out)}"
        self._add(
            ToolCalled(
                **self._env(agent, at),
                tool_name=name,
                call_id=call,
                args_digest=canonical_digest(args),
                args_sketch=sketch(args),
            ),
            took,
        )
        if text is not None:
            result, prints = text, fingerprints(text)
        self._add(
            ToolReturned(
                **self._env(agent, None),
                tool_name=name,
                call_id=call,
                status="error" if error else "ok",
                error_type=error,
                result_digest=None if error else _digest(result if result is not None else (name, args)),
                latency_ms=took * 1000,
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
        output_tokens: int | None = None,
        at: float | None = None,
    ) -> None:
        out = tokens // 5 if output_tokens is None else output_tokens
        self._add(
            TurnCompleted(
                **self._env(agent, at),
                model="gpt-4.1-mini",
                input_tokens=tokens - out,
                output_tokens=out,
                cost_usd=cost,
                context_tokens=context,
                output_digest=_digest(output if output is not None else ("turn", self.t, agent)),
            ),
            2.0,
        )

    def model_call(self, model: str, *, agent: str = "agent", at: float | None = None) -> None:
        """A model call starting (its turn.completed comes later, or never)."""
        self._add(TurnStarted(**self._env(agent, at), model=model), 0.5)

    def message(self, sender: str, receiver: str, content: object, *, at: float | None = None) -> None:
        self._add(
            MessageSent(
                **self._env(sender, at),
                to_agent_id=receiver,
                content_digest=_digest(content),
                content_sketch=sketch(content),
                # What `session.message_received` reports: a user's message comes from outside the team.
                external=True if sender == "user" else None,
            ),
            1.0,
        )

    def wait(self, agent: str, on: str, *, at: float | None = None) -> None:
        self._add(AgentWaiting(**self._env(agent, at), waiting_on_agent_id=on), 1.0)

    def heartbeat(
        self, agent: str = "agent", *, at: float | None = None, in_call_since: float | None = None
    ) -> None:
        since = None if in_call_since is None else T0 + int(in_call_since * 1000)
        self._add(Heartbeat(**self._env(agent, at), in_call_since_ms=since), 1.0)

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

    def context(self, *sources: dict[str, Any], agent: str = "agent", at: float | None = None) -> None:
        """The sources assembled into the agent's next turn (`session.context_used`); `fetched_at` and
        `valid_until` in seconds of the scenario's clock."""
        built = []
        for source in sources:
            fields = dict(source)
            for key in ("fetched_at", "valid_until"):
                if key in fields:
                    fields[f"{key}_ms"] = T0 + int(fields.pop(key) * 1000)
            built.append(ContextSource(**fields))
        self._add(ContextAssembled(**self._env(agent, at), sources=built), 0.2)


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

    def scenario(
        self, name: str, detector: str | None, *, healthy: bool = False, **overrides: Any
    ) -> Scenario:
        """A runaway tripping `detector`, or a healthy run (no detector, or one whose verdict is no kill)."""
        kind = "healthy" if detector is None or healthy else "runaway"
        scenario = Scenario(f"{kind}-{name}", detector, overrides=overrides)
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


# Words for the generated texts of the real-run patterns: queries, code, pages.
_WORDS: Final = (
    "revenue margin quarter growth churn pricing supplier invoice shipment warehouse backlog forecast "
    "contract renewal discount region segment customer ticket refund warranty compressor valve sensor "
    "firmware battery charger module release patch deploy cluster replica latency throughput budget "
    "audit policy report summary analysis dataset column index table query filter metric baseline spring "
    "autumn harbor meadow granite summit lagoon orchid pebble quartz reef tundra ember fjord"
)
_VOCABULARY: Final = tuple(_WORDS.split())


def _lexicon(size: int = 3_000) -> tuple[str, ...]:
    """Made-up words of two to four syllables: texts drawn from them share words about as rarely as real
    texts on different subjects do, which a few dozen domain words alone would not."""
    rng = random.Random(7)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    return tuple("".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(size))


_LEXICON: Final = _lexicon()


def _text(rng: random.Random, words: int) -> str:
    """Text as a tool returns it: mostly words of its own, some of the domain's."""
    return " ".join(
        rng.choice(_VOCABULARY) if rng.random() < 0.2 else rng.choice(_LEXICON) for _ in range(words)
    )


def _reworded(lib: _Library, rng: random.Random) -> None:
    """The loops real runs showed that no exact match sees: each rewords, rewrites or re-asks, and each
    result is new (or nothing new, but never the same call twice)."""
    # 1. One search reworded 4-10 times, each result list different, a page visited now and then.
    s = lib.session(lib.scenario("reworded-search", "similar_calls"))
    subject = ["acme", "third", "quarter", "revenue"]
    fillers = ["figures", "report", "total", "results", "numbers", "filing", "official"]
    asked: set[str] = set()
    for i in range(rng.randint(4, 10)):
        query = ""
        while not query or query in asked:  # reworded, never sent twice as it was
            query = " ".join(rng.sample(subject, k=len(subject)) + rng.sample(fillers, k=rng.randint(0, 2)))
        asked.add(query)
        s.tool(lib.tool("web_search"), {"query": query}, text=_text(rng, 80), at=i * 15.0)
        if rng.random() < 0.3:
            s.tool(
                lib.tool("visit"),
                {"url": f"https://news.example/{rng.randint(1, 10**6)}"},
                text=_text(rng, 200),
            )

    # 2. Exploratory code: 6-17 code runs, each rewritten and with new output, at most 2 failures in a row.
    s = lib.session(lib.scenario("exploratory-code", "similar_calls"))
    base = [
        "import pandas as pd",
        "df = pd.read_csv('orders.csv', parse_dates=['created'])",
        "monthly = df.groupby(df['created'].dt.to_period('M'))['amount'].sum()",
        "print(monthly.tail(12))",
    ]
    extras = [
        "df = df.dropna(subset=['amount'])",
        "df['amount'] = df['amount'].astype(float)",
        "df = df[df['status'] == 'paid']",
        "print(df.dtypes)",
        "monthly = monthly.sort_index()",
        "print(len(df))",
    ]
    failures = 0
    written: set[str] = set()
    for i in range(rng.randint(6, 17)):
        # New code every call (the pattern): a combination already run is rewritten once more.
        while True:
            lines = base[:]
            for extra in rng.sample(extras, k=rng.randint(1, 2)):
                lines.insert(rng.randint(1, len(lines) - 1), extra)
            if "\n".join(lines) not in written:
                break
            lines.insert(-1, f"print(df.head({i + 1}))")
            if "\n".join(lines) not in written:
                break
        written.add("\n".join(lines))
        error = None
        if failures < 2 and rng.random() < 0.3:
            error = rng.choice(["KeyError", "ValueError", "TypeError"])
        failures = failures + 1 if error else 0
        s.turn(context=8_000 + 400 * i)
        s.tool(
            lib.tool("python"),
            {"code": "\n".join(lines)},
            error=error,
            text=None if error else _text(rng, 60),
        )

    # 3. A browser agent clicking the same button 3-4 times, the page unchanged, among other actions.
    s = lib.session(lib.scenario("same-click", "repeated_tool_call"))
    s.tool(lib.tool("browser.navigate"), {"url": "https://shop.example/orders"}, text=_text(rng, 150))
    unchanged = _text(rng, 150)
    for _ in range(rng.randint(3, 4)):
        for _ in range(rng.randint(1, 3)):
            action = rng.choice(["scroll", "type", "hover"])
            s.tool(
                lib.tool(f"browser.{action}"),
                {"target": f"{action} {rng.randint(1, 10**6)}"},
                text=_text(rng, 150),
            )
        s.tool(lib.tool("browser.click"), {"selector": "#load-more"}, text=unchanged)

    # 4. The same invalid call failing twice, other failures in between.
    s = lib.session(lib.scenario("same-invalid-call", "repeated_error"))
    bad = {"sql": "SELEC id, total FROM orders WHERE total > 100"}
    s.tool(lib.tool("sql"), bad, error="SyntaxError")
    for _ in range(rng.randint(1, 3)):
        s.tool(
            lib.tool("read_file"), {"path": f"schema/{rng.randint(1, 10**6)}.sql"}, error="FileNotFoundError"
        )
    s.tool(lib.tool("sql"), bad, error="SyntaxError")

    # 5. An orchestrator re-asking its coder, each request refined; the coder answers with something new.
    s = lib.session(lib.scenario("re-delegation", "similar_calls"))
    ask = "write a python function that parses ISO dates into datetime objects"
    refinements = [
        "it must handle the Z suffix",
        "and timezone offsets too",
        "return naive datetimes in UTC",
        "raise ValueError on bad input",
        "keep it without third party packages",
    ]
    rng.shuffle(refinements)
    for i in range(rng.randint(4, 6)):
        request = "; ".join([ask, *refinements[:i]])  # each time one more thing asked for
        s.message("orchestrator", "coder", request)
        s.tool(lib.tool("python"), {"code": _text(rng, 30)}, agent="coder", text=_text(rng, 40))
        s.message("coder", "orchestrator", _text(rng, 40))

    # 6. Search, visit and find interleaved over the same few pages, which scroll a little each time.
    s = lib.session(lib.scenario("circling-the-same-pages", "no_new_information"))
    pages = [_text(rng, 160) for _ in range(3)]
    order = [page for _ in range(6) for page in rng.sample(pages, k=3)]
    for i in range(rng.randint(12, 16)):
        tool = ("web_search", "visit", "find_in_page")[i % 3]
        args = {"arg": f"{tool} {i} {rng.randint(1, 10**6)}"}
        s.tool(lib.tool(tool), args, text=f"{order[i]} {_text(rng, 4)}", at=i * 12.0)


def _healthy_real(lib: _Library, rng: random.Random) -> None:
    """The healthy runs that real trials killed: each must trip nothing."""
    # 1. A support agent answering a user 8-12 times with one lookup; the tool call follows its turn.
    s = lib.session(lib.scenario("support-dialogue", None))
    s.message("user", "agent", "my compressor arrived broken, order 4471")
    s.turn(output="let me look that order up")
    s.tool(lib.tool("lookup_order"), {"order": 4471}, text=_text(rng, 40))
    for i in range(rng.randint(8, 12)):
        s.turn(output=f"answer {i}: {_text(rng, 12)}")
        s.message("user", "agent", _text(rng, rng.randint(5, 20)), at=s.t + rng.uniform(10, 90))
    s.turn(output="glad to help")
    s.end()

    # 1b. A user asking the same thing again and again, reworded: the user's loop, not the agent's.
    s = lib.session(lib.scenario("user-asks-again", None))
    asks = ["where is my order 4471", "my order 4471 where is it", "order 4471 still not here, where is it"]
    asks += ["where is order 4471??", "is my order 4471 lost", "4471 where is my order please"]
    for i, ask in enumerate(rng.sample(asks, k=rng.randint(4, 6))):
        s.message("user", "agent", ask, at=i * 60.0)
        s.turn(output=f"your order ships tomorrow ({i})")
        if i == 0:
            s.tool(lib.tool("lookup_order"), {"order": 4471}, text=_text(rng, 40))
    s.end()

    # 2. A provider hang: five sessions of one tenant whose model calls all start in one minute and answer
    # 40 minutes later; the SDK beats from inside each call.
    scenario = lib.scenario("provider-hang", None)
    for n in range(5):
        s = lib.session(scenario, f"-{n}", user=f"u{n}")
        start = n * 7.0
        s.turn(at=start)
        for minute in range(1, 41):
            s.heartbeat(at=start + minute * 60.0, in_call_since=start + 1.0)
        s.turn(at=start + 2_410.0)
        s.end()

    # 2b. The same hang seen by agents that send nothing from inside a call (an older SDK, a framework
    # bridged from its traces): each session is silent past the stall limit, all of them in one minute. The
    # correlated-quiet stage pages it once and holds every stall kill; the sessions answer 40 minutes on.
    scenario = lib.scenario("provider-hang-without-heartbeats", "correlated_quiet", healthy=True)
    sessions = rng.randint(5, 9)
    scenario.killed = ()
    scenario.spared = tuple(f"-{n}" for n in range(sessions))
    for n in range(sessions):
        s = lib.session(scenario, f"-{n}", tenant=f"{lib.prefix}-hung", user=f"u{n}")
        start = rng.uniform(0.0, 55.0)
        s.turn(at=start)
        s.model_call("provider-x-large", at=start + 1.0)
        s.turn(at=start + 2_410.0)
        s.end()

    # 3. One legitimate five-minute tool call.
    s = lib.session(lib.scenario("long-tool-call", None))
    s.turn()
    for _ in range(1, 6):
        s.heartbeat(at=s.t + 60.0, in_call_since=1.0)
    s.tool(lib.tool("export_report"), {"range": "2025"}, text=_text(rng, 50), took=0.5)
    s.turn()
    s.end()

    # 4. A coding run re-sending its 20k-token context 25 times (500k in all), editing and testing.
    s = lib.session(lib.scenario("coding-context-resend", None))
    for i in range(25):
        s.turn(tokens=20_000, cost=0.03, context=20_000 + 100 * i, at=i * 20.0)
        if i % 5 == 4:
            s.tool(
                lib.tool("run_tests"),
                {"suite": "unit"},
                text=f"{rng.randint(1, 40)} failed " + _text(rng, 60),
            )
        else:
            s.tool(
                lib.tool("edit_file"), {"path": f"src/mod{i % 7}.py", "patch": _text(rng, 20)}, result="ok"
            )
    s.end()

    # 5. A router whose whole output is the next speaker's name, the same one several times in a row.
    s = lib.session(lib.scenario("router", None))
    for _ in range(rng.randint(4, 8)):
        s.turn(agent="router", tokens=900, output_tokens=2, output="researcher")
        s.turn(agent="researcher", output=_text(rng, 30))
        s.tool(lib.tool("web_search"), {"q": _text(rng, 4)}, agent="researcher", text=_text(rng, 80))
    s.end("router")


def _runaways(lib: _Library, rng: random.Random) -> None:
    s = lib.session(lib.scenario("step-ceiling", "max_steps"))
    for page in range(51):
        s.tool(lib.tool("list_orders"), {"page": page}, {"orders": page})

    s = lib.session(lib.scenario("token-ceiling", "max_tokens"))
    for i in range(5):
        s.turn(tokens=450_000, cost=0.05, context=100_000)
        s.tool(lib.tool("read_chapter"), {"chapter": i})

    s = lib.session(lib.scenario("cost-ceiling", "max_cost_usd"))
    for i in range(4):
        s.turn(tokens=20_000, cost=3.0, context=20_000)
        s.tool(lib.tool("check_draft"), {"draft": i})

    s = lib.session(lib.scenario("same-call-again", "repeated_tool_call"))
    for _ in range(5):
        s.turn()
        s.tool(lib.tool("web_search"), {"q": "acme q3 revenue"}, {"hits": ["a", "b"]})

    _reworded(lib, rng)
    s = lib.session(lib.scenario("search-fetch-cycle", "cyclic_pattern"))
    for _ in range(3):
        s.tool(lib.tool("search"), {"q": "pricing"}, {"hits": rng.randint(1, 10**6)})
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
    for _ in range(9):  # the ninth completing shows that the eighth did nothing either
        s.turn()

    s = lib.session(lib.scenario("timeout-again", "repeated_error"))
    for i in range(3):
        s.tool(lib.tool("crm_lookup"), {"attempt": i}, error="TimeoutError")

    s = lib.session(lib.scenario("spending-fast", "burn_rate"))
    s.scenario.labelled = False  # warns by default
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
    s.scenario.labelled = False  # warns by default
    for i in range(51):
        s.write("scratch", f"note-{i}", f"intermediate result number {i} of the batch job that writes a lot")
    s.end()

    # Four sessions of one tenant, none near its own ceiling, together past a $2.50 day (each turn below
    # the burn rate's minimum spend).
    big = f"{lib.prefix}-bigspender"
    scenario = lib.scenario(
        "tenant-day", "tenant_daily_budget", tenants={big: {"tenant_daily_budget": {"max_cost_usd": 2.5}}}
    )
    scenario.killed = ("-2", "-3")  # the sessions still spending once the day's budget is gone
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
    scenario.killed = ("-1", "-2")
    for n in range(3):
        s = lib.session(scenario, f"-{n}")
        for i in range(2):
            s.turn(agent=buyer, cost=0.45, at=n * 10.0 + i * 150.0)
            s.tool(lib.tool("quote"), {"s": n, "i": i}, agent=buyer)
        s.end(buyer)

    # A dependency failing for everybody: no session sees much, the fleet sees 2 errors in 3 calls.
    scenario = lib.scenario("dependency-down", "tool_circuit")
    scenario.labelled = False  # opens the tool's circuit; kills nobody
    flaky = lib.tool("payments_api")
    for n in range(8):
        s = lib.session(scenario, f"-{n}", user=f"u{n}")
        s.tool(flaky, {"n": n, "i": 0}, {"ok": n}, at=n * 2.0)
        s.tool(flaky, {"n": n, "i": 1}, error="TimeoutError")
        s.tool(flaky, {"n": n, "i": 2}, error="ConnectionError")
        s.end()

    # A user's record written to memory in one session comes back in another user's tool result.
    scenario = lib.scenario("record-leak", "memory_leak")
    scenario.killed, scenario.spared = ("-reader",), ("-owner",)
    owner = lib.session(scenario, "-owner", user="dana")
    owner.write("crm-notes", "dana/profile", _RECORD)
    owner.end()
    reader = lib.session(scenario, "-reader", user="eve")
    reader.turn(at=30.0)
    reader.tool(
        lib.tool("semantic_search"), {"q": "compressor orders"}, {"hits": 1}, prints=fingerprints(_RECORD)
    )
    reader.end()

    # A retrieval step that mixed another user's CRM record into the context of this user's turn.
    scenario = lib.scenario("foreign-context", "context_scope")
    s = lib.session(scenario, user="eve")
    s.turn(at=2.0)
    s.context(
        {"name": "kb/public/returns-policy", "fetched_at": 0.0},
        {
            "name": "crm.accounts",
            "id": "acct-4471",
            "fetched_at": 2.5,
            "owner_tenant_id": lib.tenant,
            "owner_user_id": f"{lib.prefix}-dana",
        },
    )
    s.turn()
    s.end()

    # A price list cached past the time its source said it holds: worth a page, not a kill.
    scenario = lib.scenario("stale-context", "context_freshness")
    scenario.labelled = False  # warns by default
    s = lib.session(scenario)
    s.context({"name": "pricing.list", "id": "2025-q4", "fetched_at": 0.0, "valid_until": 1.0}, at=30.0)
    s.turn()
    s.end()

    scenario = lib.scenario("key-leak", "memory_namespace_leak")
    scenario.killed, scenario.spared = ("-reader",), ("-owner",)
    owner = lib.session(scenario, "-owner", user="sam")
    owner.write("prefs", "sam/settings", "dark mode on")
    owner.end()
    reader = lib.session(scenario, "-reader", user="kim")
    reader.read("prefs", "sam/settings", "dark mode on", at=30.0)
    reader.end()


def _healthy(lib: _Library, rng: random.Random) -> None:
    _healthy_real(lib, rng)
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

    # The user's own records, a tenant-wide handbook and a fresh public page in one turn's context.
    s = lib.session(lib.scenario("own-context", None), user="dana")
    s.context(
        {
            "name": "crm.accounts",
            "id": "acct-4471",
            "fetched_at": 0.5,
            "owner_tenant_id": lib.tenant,
            "owner_user_id": f"{lib.prefix}-dana",
        },
        {"name": "handbook", "id": "returns", "owner_tenant_id": lib.tenant},
        {"name": "web", "id": "https://example.com/returns", "fetched_at": 1.0, "valid_until": 3_600.0},
        at=2.0,
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


def scenario_library(prefix: str = "lib", *, variant: int | None = None) -> list[Scenario]:
    """Every scenario, its session ids, tenants, users and tools starting with `prefix`. `variant` seeds
    the wording, lengths and interleaving of the patterns real runs showed (None: the library's own), so
    a property test can try many runs of each pattern."""
    lib = _Library(prefix)
    rng = random.Random(variant if variant is not None else 14)
    _runaways(lib, rng)
    _healthy(lib, rng)
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


def write_library(directory: Path, *, variant: int | None = None) -> list[Path]:
    """The library as a user's own recording would be: `events.jsonl` (in time order), `expect.json`
    (session id -> "kill" or "none", for `tripwire replay --expect`) and `tripwire.yaml` (the overrides it
    needs as a `detectors` section)."""
    library = scenario_library("lib", variant=variant)
    directory.mkdir(parents=True, exist_ok=True)
    events = directory / "events.jsonl"
    events.write_bytes(b"".join(encode_event(e) + b"\n" for e in in_time_order(library)))
    labels = {sid: label for scenario in library for sid, label in scenario.labels().items()}
    expect = directory / "expect.json"
    expect.write_bytes(orjson.dumps(labels, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    config = directory / "tripwire.yaml"
    config.write_bytes(orjson.dumps({"detectors": overrides(library)}, option=orjson.OPT_INDENT_2))
    return [events, expect, config]
