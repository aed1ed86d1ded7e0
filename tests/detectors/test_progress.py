"""Loops that never repeat exactly: reworded calls and re-delegations (similar sketches), and calls that
bring nothing new (fingerprints seen already in the session)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import (
    MessageSent,
    ToolCalled,
    ToolReturned,
    TurnCompleted,
    canonical_digest,
    fingerprints,
    similarity,
    sketch,
)
from detectors import FailureClass, NoNewInformation, SimilarCalls, Verdict
from detectors._loops import NoProgress, RepeatedError
from tests.detectors.sessions import SessionUnderTest

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basalt",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "island",
    "jasper",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "orchid",
    "pebble",
    "quartz",
    "reef",
    "summit",
    "tundra",
    "umber",
]


class Session(SessionUnderTest):
    def call(self, t: int, args: object, tool: str = "search", agent: str = "a1") -> list[Verdict]:
        return self.send(
            ToolCalled(
                **self.envelope(t, agent),
                tool_name=tool,
                call_id=f"c{t}",
                args_digest=canonical_digest(args),
                args_sketch=sketch(args),
            )
        )

    def result(
        self,
        t: int,
        text: str | None = None,
        *,
        call_t: int | None = None,
        tool: str = "search",
        error: str | None = None,
        digest: str = "r",
    ) -> list[Verdict]:
        return self.send(
            ToolReturned(
                **self.envelope(t, "a1"),
                tool_name=tool,
                call_id=f"c{t if call_t is None else call_t}",
                status="error" if error else "ok",
                error_type=error,
                result_digest=None if error else (digest if text is None else canonical_digest(text)),
                latency_ms=10.0,
                fingerprints=fingerprints(text) if text else None,
            )
        )

    def ask(self, t: int, sender: str, to: str, content: str) -> list[Verdict]:
        return self.send(
            MessageSent(
                **self.envelope(t, sender),
                to_agent_id=to,
                content_digest=canonical_digest(content),
                content_sketch=sketch(content),
            )
        )


def fires_at(outcomes: list[list[Verdict]]) -> list[int]:
    return [i for i, v in enumerate(outcomes) if v]


def page(seed: int, words: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


# The sketch


def test_reworded_text_is_alike_and_unrelated_text_is_not() -> None:
    a = sketch({"q": "acme revenue q3"})
    assert a is not None
    assert len(a) == 66
    assert similarity(a, a) == 1.0
    assert similarity(a, sketch({"query": "ACME  Revenue Q3"}) or "") == 1.0  # keys, case, spacing
    assert similarity(a, sketch({"q": "q3 revenue acme"}) or "") > 0.6  # reordered
    assert similarity(a, sketch({"q": "revenue of acme in q3"}) or "") > 0.5
    assert similarity(a, sketch({"q": "eu regulation pedelec speed limit"}) or "") < 0.15
    # Short texts with other numbers are other requests, however alike their words.
    assert similarity(sketch("summarise section 3") or "", sketch("summarise section 4") or "") == 0.0
    assert sketch({"n": None}) is None
    assert similarity(a, "zz") == 0.0


# SimilarCalls


def test_a_search_reworded_four_times_fires_and_distinct_searches_do_not() -> None:
    s = Session(SimilarCalls())
    queries = [
        "acme revenue q3",
        "q3 revenue of acme",
        "ACME Q3 revenue figures",
        "acme q3 revenue report",
    ]
    fired = [s.call(i * 20_000, {"q": q}) for i, q in enumerate(queries)]
    assert fires_at(fired) == [3]
    (v,) = fired[3]
    assert v.failure_class is FailureClass.RUNAWAY_EXECUTION
    assert (v.evidence["match"], v.evidence["tool_name"], v.observed) == ("similar_arguments", "search", 4)
    healthy = Session(SimilarCalls())
    topics = ["market size of e-bikes", "competitors of vanmoof", "pricing trends 2025", "eu pedelec law"]
    assert fires_at([healthy.call(i * 20_000, {"q": q}) for i, q in enumerate(topics)]) == []


def test_the_same_call_again_neither_counts_nor_breaks_a_run_and_old_calls_fall_out() -> None:
    s = Session(SimilarCalls(count=3, window_ms=60_000))
    assert s.call(0, {"q": "acme revenue q3"}) == []
    assert s.call(1_000, {"q": "acme revenue q3"}) == []
    assert s.call(2_000, {"q": "q3 revenue acme report"}) == []
    assert s.call(70_000, {"q": "acme q3 revenue figures"}) == []  # the run began over a minute ago
    late = Session(SimilarCalls(count=3))
    outcomes = [late.call(i * 1_000, {"q": q}) for i, q in enumerate(["acme q3", "acme q3", "q3 acme"])]
    assert fires_at(outcomes) == []


def test_rewritten_code_fires_and_a_pipeline_of_different_steps_does_not() -> None:
    rewrites = [
        "import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.groupby('region').sum())",
        "import pandas as pd\ndf = pd.read_csv('sales.csv', sep=';')\n"
        "print(df.groupby('region')['amount'].sum())",
        "import pandas as pd\ndf = pd.read_csv('data/sales.csv')\nprint(df.groupby('region').amount.sum())",
        "import pandas as pd\ndf = pd.read_csv('sales.csv', encoding='latin-1')\n"
        "print(df.groupby('region').sum())",
    ]
    s = Session(SimilarCalls())
    assert fires_at([s.call(i * 30_000, {"code": c}, tool="python") for i, c in enumerate(rewrites)]) == [3]
    steps = [
        "import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.head())",
        "import matplotlib.pyplot as plt\nplt.plot(df['date'], df['amount'])\nplt.savefig('plot.png')",
        "from sklearn.linear_model import LinearRegression\nm = LinearRegression().fit(X, y)",
        "with open('report.md', 'w') as f:\n    f.write(summary_table.to_markdown())",
    ]
    healthy = Session(SimilarCalls())
    assert fires_at([healthy.call(i * 30_000, {"code": c}, tool="python") for i, c in enumerate(steps)]) == []


def test_an_orchestrator_re_asking_its_sub_agent_fires_and_a_plan_of_sections_does_not() -> None:
    s = Session(SimilarCalls())
    asks = [
        "write a function that parses ISO dates into datetime objects",
        "write the ISO date parsing function again, returning datetime objects",
        "write a function parsing ISO dates to datetime objects; handle the Z suffix",
        "please write the function that parses ISO dates into datetime, with offsets",
    ]
    fired = [s.ask(i * 60_000, "orchestrator", "coder", a) for i, a in enumerate(asks)]
    assert fires_at(fired) == [3]
    assert fired[3][0].evidence["match"] == "similar_messages"
    plan = Session(SimilarCalls())
    outcomes = [plan.ask(i * 60_000, "planner", "worker", f"summarise section {i}") for i in range(8)]
    assert fires_at(outcomes) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, len(WORDS) - 1), min_size=2, max_size=30), st.integers(0, 2**32))
def test_queries_that_share_no_word_are_never_alike(indexes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    words = [WORDS[i] for i in dict.fromkeys(indexes)]
    half = len(words) // 2
    a, b = " ".join(words[:half]), " ".join(words[half:])
    if a and b and not set(a) & set(b):
        assert similarity(sketch(a) or "", sketch(b) or "") < 0.3
    s = Session(SimilarCalls(count=3))
    shuffled = words[:]
    rng.shuffle(shuffled)
    # Fresh words every call: never a run.
    chunks = [" ".join(shuffled[i : i + 1]) + f" {WORDS[i % len(WORDS)]}x{i}" for i in range(len(shuffled))]
    assert sum(bool(s.call(i * 1_000, {"q": c})) for i, c in enumerate(chunks)) <= 1


# NoNewInformation


def test_interleaved_search_visit_find_over_the_same_pages_fires() -> None:
    s = Session(NoNewInformation(calls=6))
    pages = [page(n) for n in range(3)]
    outcomes = []
    for i in range(9):
        tool = ("search", "visit", "find")[i % 3]
        t = i * 10_000
        s.call(t, {"q": f"step {i}"}, tool=tool)
        # Each result is one of the same three pages, scrolled a little: mostly seen before.
        text = pages[i % 3] + " " + page(100 + i, words=6)
        outcomes.append(s.result(t + 1_000, text, call_t=t, tool=tool))
    assert fires_at(outcomes)
    v = next(v for o in outcomes for v in o)
    assert v.evidence["new_share"] < 0.1
    assert v.evidence["calls"] == 6


def test_research_that_keeps_finding_new_pages_never_fires() -> None:
    s = Session(NoNewInformation(calls=6))
    outcomes = []
    for i in range(30):
        t = i * 10_000
        s.call(t, {"q": f"topic {i}"})
        outcomes.append(s.result(t + 1_000, page(i), call_t=t))
    assert fires_at(outcomes) == []


def test_edits_answering_ok_are_no_information_either_way_but_the_same_answer_again_is_none() -> None:
    s = Session(NoNewInformation(calls=4))
    for i in range(20):  # new edits, each "ok": neither progress nor its lack
        s.call(i * 1_000, {"path": f"f{i}.py", "diff": f"line {i}"}, tool="edit")
        assert s.result(i * 1_000 + 500, call_t=i * 1_000, tool="edit", digest="ok") == []
    polls = Session(NoNewInformation(calls=4))
    outcomes = []
    for i in range(5):
        polls.call(i * 1_000, {"job": 7}, tool="status")
        outcomes.append(polls.result(i * 1_000 + 500, call_t=i * 1_000, tool="status", digest="running"))
    assert fires_at(outcomes) == [4]


# RepeatedError: the same invalid call


def test_the_same_invalid_call_failing_twice_among_other_failures_fires() -> None:
    s = Session(RepeatedError())
    s.call(0, {"sql": "selec * from t"}, tool="db")
    assert s.result(500, call_t=0, tool="db", error="SyntaxError") == []
    s.call(1_000, {"path": "/x"}, tool="read")
    assert s.result(1_500, call_t=1_000, tool="read", error="FileNotFoundError") == []
    s.call(2_000, {"sql": "selec * from t"}, tool="db")
    (v,) = s.result(2_500, call_t=2_000, tool="db", error="SyntaxError")
    assert (v.evidence["match"], v.evidence["failures"]) == ("same_call", 2)


@pytest.mark.parametrize("error", ["TimeoutError", "RateLimitError", "ServiceUnavailable", "HTTP 503"])
def test_retrying_a_call_that_timed_out_or_was_throttled_is_not_a_loop(error: str) -> None:
    s = Session(RepeatedError())
    for i in range(2):
        s.call(i * 1_000, {"id": 7}, tool="crm")
        assert s.result(i * 1_000 + 500, call_t=i * 1_000, tool="crm", error=error) == []


# NoProgress: routers


def test_a_router_naming_the_same_next_speaker_is_not_stuck() -> None:
    s = Session(NoProgress(min_output_tokens=10))

    def turn(t: int, out: int) -> list[Verdict]:
        return s.send(
            TurnCompleted(
                **s.envelope(t, "router"),
                model="m",
                input_tokens=900,
                output_tokens=out,
                output_digest="researcher",
            )
        )

    assert fires_at([turn(i, 3) for i in range(6)]) == []
    assert fires_at([turn(10 + i, 40) for i in range(3)]) == [2]
