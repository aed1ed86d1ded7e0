"""Many sessions going quiet together (a provider hang): one incident paged once, their stall kills held;
a session quiet on its own is still killed. Through the worker's whole judging path: the stall timer, the
correlated-quiet stage and its hold verdicts back to each session."""

from __future__ import annotations

from typing import Any

from agents_contract import SessionStarted, TurnCompleted, TurnStarted, encode_event
from detectors import CORRELATED_QUIET, DetectorSettings, SessionState, Stall, hold_quiet, quiet_signal
from tests.streams.judging import Clock, JudgingPath

T0 = 1_767_225_600_000
QUIET_S = 60
WINDOW_S = 20
HOLD_S = 600
# Long enough for every session started together to be reported and held.
QUIET_SLOT_WAIT = QUIET_S + 5


def path(**quiet: Any) -> JudgingPath:
    settings = DetectorSettings.model_validate(
        {
            "stall": {"quiet_s": QUIET_S},
            "correlated_quiet": {"min_sessions": 3, "window_s": WINDOW_S, "hold_s": HOLD_S, **quiet},
        }
    )
    return JudgingPath(settings, Clock(T0))


def start(p: JudgingPath, sid: str, *, tenant: str = "acme", model: str = "big-model", seq: int = 1) -> None:
    """A session starting and calling a model that does not answer."""
    at = p.clock.now_ms
    envelope = {"session_id": sid, "agent_id": "a", "tenant_id": tenant, "user_id": f"u-{sid}"}
    for event in (
        SessionStarted(**envelope, event_id=f"{sid}-{seq}", seq=seq, event_time_ms=at),
        TurnStarted(**envelope, event_id=f"{sid}-{seq + 1}", seq=seq + 1, event_time_ms=at, model=model),
    ):
        p.send(encode_event(event), sid.encode())


def run_for(p: JudgingPath, seconds: int) -> None:
    for _ in range(seconds):
        p.tick(1_000)


def test_sessions_quiet_together_are_one_incident_paged_once_and_none_is_killed() -> None:
    p = path()
    for n in range(4):
        start(p, f"s-{n}")
        run_for(p, 3)
    run_for(p, QUIET_S + WINDOW_S + 60)
    assert p.judged.kills == []
    (page,) = p.judged.alerts
    assert (page.detector, page.action, page.severity) == (CORRELATED_QUIET, "held", "critical")
    assert page.summary == "[tripwire] 3 sessions of tenant acme went quiet together: correlated_quiet"
    assert page.evidence["model"] == "big-model"
    assert "one incident upstream" in page.reason
    assert page.reason.endswith("their stall kills are held until 600 s after each went quiet")
    # The fourth session joined the incident without another page; every one is held.
    for n in range(4):
        assert p.states[f"s-{n}"].killed_by is None
    # Held until HOLD_S after each went quiet: then the stall kill goes ahead, saying it was held.
    run_for(p, HOLD_S)
    assert sorted(p.judged.killed()) == [f"s-{n}" for n in range(4)]
    assert {k.detector for k in p.judged.kills} == {"stall"}
    assert all("held" in k.reason for k in p.judged.kills)
    # With the last of them over, the incident's page is resolved under its own id.
    closed = p.judged.alerts[-1]
    assert (closed.alert_id, closed.status) == (page.alert_id, "resolved")
    assert "4 were killed once their hold ran out" in closed.reason


def speak(p: JudgingPath, sid: str, seq: int) -> None:
    at = p.clock.now_ms
    envelope = {"session_id": sid, "agent_id": "a", "tenant_id": "acme", "user_id": f"u-{sid}"}
    event = TurnCompleted(
        **envelope, event_id=f"{sid}-{seq}", seq=seq, event_time_ms=at, model="big-model", input_tokens=9,
        output_tokens=1,
    )  # fmt: skip
    p.send(encode_event(event), sid.encode())


def test_the_incident_page_is_resolved_once_every_session_in_it_speaks_again() -> None:
    p = path()
    for n in range(3):
        start(p, f"s-{n}")
    run_for(p, QUIET_SLOT_WAIT)
    (page,) = p.judged.alerts
    speak(p, "s-0", 3)
    speak(p, "s-1", 3)
    run_for(p, 2)
    assert p.judged.alerts == [page]  # one is still quiet
    speak(p, "s-2", 3)
    (_, closed) = p.judged.alerts
    assert (closed.alert_id, closed.status, closed.action) == (page.alert_id, "resolved", "held")
    assert "3 spoke again" in closed.reason
    assert p.judged.kills == []


def test_a_session_quiet_on_its_own_is_killed_once_the_others_had_time_to_join() -> None:
    p = path()
    start(p, "alone")
    run_for(p, QUIET_S + WINDOW_S - 1)
    assert p.judged.kills == []
    run_for(p, 3)
    assert p.judged.killed() == {"alone": "stall"}
    assert p.judged.alerts[-1].action == "killed"


def test_too_few_sessions_or_other_tenants_and_models_are_separate_stalls() -> None:
    p = path()
    start(p, "a-1", tenant="acme", model="m1")
    start(p, "a-2", tenant="acme", model="m2")
    start(p, "b-1", tenant="globex", model="m1")
    run_for(p, QUIET_S + WINDOW_S + 2)
    assert sorted(p.judged.killed()) == ["a-1", "a-2", "b-1"]
    assert [a.action for a in p.judged.alerts] == ["killed"] * 3


def test_sessions_quiet_further_apart_than_the_window_are_not_one_incident() -> None:
    p = path()
    for n in range(3):
        start(p, f"s-{n}")
        run_for(p, WINDOW_S + 5)
    run_for(p, QUIET_S + WINDOW_S)
    assert sorted(p.judged.killed()) == ["s-0", "s-1", "s-2"]


def test_warn_mode_pages_the_incident_and_holds_nothing() -> None:
    p = path(mode="warn")
    for n in range(3):
        start(p, f"s-{n}")
    run_for(p, QUIET_S + 2)
    assert sorted(p.judged.killed()) == ["s-0", "s-1", "s-2"]
    # Paged once; the page is resolved when the last of its sessions is over (here: killed).
    pages = [(a.action, a.status) for a in p.judged.alerts if a.detector == CORRELATED_QUIET]
    assert pages == [("warned", "firing"), ("warned", "resolved")]
    assert "held" not in p.judged.alerts[0].reason


def test_switched_off_each_stall_is_killed_at_its_own_limit() -> None:
    p = path(enabled=False)
    for n in range(3):
        start(p, f"s-{n}")
    run_for(p, QUIET_S + 2)
    assert sorted(p.judged.killed()) == ["s-0", "s-1", "s-2"]
    assert all(a.detector == "stall" for a in p.judged.alerts)


def test_a_hold_ends_when_the_session_speaks_and_its_next_silence_is_judged_afresh() -> None:
    state = SessionState("s", tenant_id="acme", origin_ms=T0, first_event_ms=T0, last_event_ms=T0, events=2)
    stall = Stall(quiet_ms=60_000, settle_ms=20_000)
    assert stall.expire(state, T0 + 61_000) is None
    assert quiet_signal(state) == (T0, "")
    assert quiet_signal(state) is None  # reported once per silence
    assert hold_quiet(state, T0, T0 + 600_000)
    assert stall.expire(state, T0 + 300_000) is None
    # A hold for another silence than the session's own is refused.
    assert not hold_quiet(state, T0 + 5, T0 + 900_000)
    # The session speaks, then goes quiet again, alone: killed after the wait, the old hold gone.
    state.last_event_ms = T0 + 310_000
    assert stall.expire(state, T0 + 371_000) is None
    assert quiet_signal(state) == (T0 + 310_000, "")
    verdict = stall.expire(state, T0 + 391_000)
    assert verdict is not None
    assert "held" not in verdict.reason
