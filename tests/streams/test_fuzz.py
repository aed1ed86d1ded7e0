"""Fuzzing the worker's judging path (hypothesis): schema-valid events with extreme values, hostile bytes and
hostile interleavings go through parse, judge, keyed stages, every command and alert built and encoded, every
state encoded. Nothing raises, no state grows past a bound, and nothing one tenant sends changes the verdicts
on another tenant's sessions."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.streams.judging import VERDICTS, Clock, JudgingPath

NOW = Clock().now_ms
_ID_ALPHABET = "abcXYZ019._:@/+=-"

ids = st.one_of(
    st.sampled_from(["a1", "a2", "s-1", "s-2", "t"]),
    st.text(_ID_ALPHABET, min_size=1, max_size=128),
    st.just("z" * 128),
)
names = st.one_of(st.sampled_from(["search", "code", "fetch"]), st.text(min_size=1, max_size=256))
counts = st.one_of(st.integers(0, 100), st.just(10**12), st.integers(0, 10**12))
usd = st.one_of(st.floats(0, 10), st.just(1e9), st.floats(0, 1e9, allow_nan=False))
times = st.one_of(
    st.integers(NOW - 60_000, NOW + 60_000),
    st.sampled_from([0, 1, 2**53 - 1, 253_402_300_799_000, NOW - 40 * 86_400_000]),
    st.integers(0, 2**53 - 1),
)
seqs = st.one_of(st.integers(0, 200), st.sampled_from([2**63 - 1, 2**40, 0]), st.integers(0, 2**63 - 1))
prints = st.lists(st.integers(0, 2**64 - 1), max_size=40)


def payload(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    tool = {"gen_ai.tool.name": names, "gen_ai.tool.call.id": ids}
    choices: dict[str, dict[str, Any]] = {
        "session.started": {},
        "session.ended": {"outcome": st.sampled_from(["completed", "failed", "killed"])},
        "turn.started": {"gen_ai.request.model": names},
        "turn.completed": {
            "gen_ai.request.model": names,
            "gen_ai.usage.input_tokens": counts,
            "gen_ai.usage.output_tokens": counts,
            "cost_usd": usd,
            "context_tokens": counts,
            "output_digest": st.sampled_from(["o1", "o2", "x" * 128]),
        },
        "tool.called": {**tool, "args_digest": st.sampled_from(["d1", "d2", "d" * 128])},
        "tool.returned": {
            **tool,
            "status": st.sampled_from(["ok", "error"]),
            "error.type": names,
            "latency_ms": st.floats(0, 1e9),
            "result_digest": st.sampled_from(["r1", "r2"]),
            "fingerprints": prints,
        },
        "memory.written": {"store": names, "key": names, "fingerprints": prints},
        "memory.read": {"store": names, "key": names, "fingerprints": prints},
        "message.sent": {"to_agent_id": ids, "content_digest": st.sampled_from(["c1", "c2"])},
        "agent.waiting": {"waiting_on_agent_id": ids},
        "heartbeat": {},
        "control.ack": {"command_id": ids, "outcome": st.sampled_from(["stopped", "already_stopped"])},
    }
    return st.fixed_dictionaries({"kind": st.just(kind), **choices[kind]})


_KINDS = [
    "session.started",
    "session.ended",
    "turn.started",
    "turn.completed",
    "tool.called",
    "tool.returned",
    "memory.written",
    "memory.read",
    "message.sent",
    "agent.waiting",
    "heartbeat",
    "control.ack",
]


@st.composite
def events(
    draw: st.DrawFn, *, tenants: st.SearchStrategy[str] = ids, sessions: st.SearchStrategy[str] = ids
) -> bytes:
    kind = draw(st.sampled_from(_KINDS))
    body = draw(payload(kind))
    envelope = {
        "schema_version": 1,
        "event_id": draw(ids),
        "session_id": draw(sessions),
        "agent_id": draw(ids),
        "tenant_id": draw(tenants),
        "user_id": draw(ids),
        "seq": draw(seqs),
        "event_time_ms": draw(times),
    }
    return orjson.dumps({**envelope, **body})


hostile = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"[]", b"null", b"{}", b'{"schema_version": 1}', b"[[1]]"]),
    st.builds(
        lambda v: orjson.dumps(v),
        st.dictionaries(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), max_size=5),
    ),
)

Step = tuple[str, bytes, bytes | None]
step = st.one_of(
    events().map(lambda raw: ("events", raw, orjson.loads(raw)["session_id"].encode())),
    hostile.map(lambda raw: ("events", raw, b"s-1")),
    hostile.map(lambda raw: ("verdicts", raw, b"s-1")),
    st.just(("tick", b"", None)),
)


def run(path: JudgingPath, steps: list[Step]) -> None:
    for where, raw, key in steps:
        if where == "tick":
            path.tick(30_000)
        else:
            path.send(raw, key, topic=VERDICTS if where == "verdicts" else "agent.events")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60))
def test_no_record_raises_and_no_state_grows_without_bound(steps: list[Step]) -> None:
    path = JudgingPath()
    run(path, steps)
    assert path.largest_state < 16_384
    assert path.largest_stage_state < 16_384
    internal = [letter for letter in path.judged.dead_letters if letter.code == "internal_error"]
    assert internal == [], [letter.reason for letter in internal]


# Isolation: a victim tenant's fixed story, with an attacker tenant's events interleaved anywhere after the
# victim's sessions began. Attacker fingerprints come from their own range: content ownership is first
# writer wins, so a tenant that writes some content first owns it (a limit of that detector, not tested
# here).
VICTIM = "victim"


def victim_story() -> list[Step]:
    def ev(session: str, seq: int, kind: str, t: int, **body: Any) -> Step:
        raw = orjson.dumps(
            {
                "schema_version": 1,
                "event_id": f"{session}-{seq}",
                "session_id": session,
                "agent_id": "va",
                "tenant_id": VICTIM,
                "user_id": "vu",
                "seq": seq,
                "event_time_ms": NOW + t,
                "kind": kind,
                **body,
            }
        )
        return ("events", raw, session.encode())

    story = [ev("v-run", 1, "session.started", 0), ev("v-ok", 1, "session.started", 0)]
    for i in range(2, 70):
        story.append(
            ev(
                "v-run",
                i,
                "tool.called",
                i * 10,
                **{"gen_ai.tool.name": "search", "gen_ai.tool.call.id": f"c{i}"},
                args_digest="same",
            )
        )
        if i % 10 == 0:
            story.append(
                ev(
                    "v-ok",
                    i,
                    "tool.returned",
                    i * 10,
                    **{"gen_ai.tool.name": "search", "gen_ai.tool.call.id": f"o{i}"},
                    status="ok",
                    latency_ms=3.0,
                    result_digest=f"r{i}",
                )
            )
    story.append(ev("v-ok", 200, "session.ended", 900))
    return story


attacker_step = st.one_of(
    events(
        tenants=st.sampled_from(["attacker", "evil"]),
        sessions=st.sampled_from(["v-run", "v-ok", "x-1", "x-2"]),
    ).map(lambda raw: ("events", raw, orjson.loads(raw)["session_id"].encode())),
    hostile.map(lambda raw: ("events", raw, b"v-run")),
    hostile.map(lambda raw: ("verdicts", raw, b"v-run")),
)


def _fingerprints_apart(raw: bytes) -> bytes:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if isinstance(data, dict) and "fingerprints" in data:
        data["fingerprints"] = [2**40 + (f % 1000) for f in data["fingerprints"]]
        return orjson.dumps(data)
    return raw


def victim_outcome(path: JudgingPath) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    kills = {k.target: k.detector for k in path.judged.kills if k.target.startswith("v-")}
    alerts = {(a.session_id, a.detector, a.action) for a in path.judged.alerts if a.tenant_id == VICTIM}
    return kills, alerts


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(2, 80), attacker_step), max_size=40))
def test_nothing_another_tenant_sends_changes_the_verdicts_on_a_tenants_sessions(
    inserts: list[tuple[int, Step]],
) -> None:
    story = victim_story()
    baseline = JudgingPath()
    run(baseline, story)
    expected = victim_outcome(baseline)
    assert expected[0] == {"v-run": "repeated_tool_call"}

    mixed = list(story)
    for at, (where, raw, key) in sorted(inserts, key=lambda x: -x[0]):
        mixed.insert(min(at, len(mixed)), (where, _fingerprints_apart(raw), key))
    attacked = JudgingPath()
    run(attacked, mixed)
    assert victim_outcome(attacked) == expected
