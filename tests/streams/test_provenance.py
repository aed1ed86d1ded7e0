"""Records tied to who wrote them: a tenant's events signed with its key, the keyed stages' records and
verdicts signed by the workers. What is not is dead-lettered with the reason, and never judged."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents_contract import SIGNATURE_HEADER, CommandSigner, EventAuth, RecordSigner, encode_event
from detectors import DetectorSuite, FailureClass, SessionState, Verdict
from streams import ConfigError, Pipeline, RawRecord, load_settings
from streams._config import internal_signer
from streams.worker._pipeline import encode_verdict
from streams.worker._stages import StageJudge
from tests.detectors.test_ceilings import tool_call
from tests.streams.test_pipeline import pipeline
from tests.streams.test_stages import failing_call, settings

SIGNER = CommandSigner("p" * 32)
ACME_OLD, ACME_NEW = "acme-event-key-" + "o" * 20, "acme-event-key-" + "n" * 20
WORKERS = RecordSigner(["internal-" + "w" * 32])


def signed(value: bytes, key: str) -> RawRecord:
    return RawRecord(b"s-1", value, 0, 0, "", [(SIGNATURE_HEADER, RecordSigner([key]).sign(value))])


def test_a_tenant_that_requires_signed_events_gets_only_those_judged() -> None:
    p = pipeline(max_steps=100)
    p._event_auth = EventAuth({"acme": [ACME_NEW, ACME_OLD]})
    states: dict[str, SessionState] = {}
    values = [encode_event(tool_call(seq)) for seq in range(1, 6)]  # tenant acme
    batch = [
        signed(values[0], ACME_NEW),
        signed(values[1], ACME_OLD),  # the key being rotated out still verifies
        RawRecord(b"s-1", values[2], 0, 2),
        signed(values[3], "someone-else-key-" + "x" * 20),
        RawRecord(b"s-1", values[4], 0, 4, "", [(SIGNATURE_HEADER, b"0" * 64)]),
    ]
    result = p.judge(batch, states.get)
    assert result.events == 2
    assert [(d.code, d.record.offset) for d in result.dead_letters] == [
        ("unsigned", 2),
        ("bad_signature", 0),
        ("bad_signature", 4),
    ]
    assert "tenant acme requires signed events" in result.dead_letters[0].reason
    assert all(ACME_NEW not in d.reason and ACME_OLD not in d.reason for d in result.dead_letters)
    # Another tenant's events are judged signed or not.
    other = encode_event(tool_call(1).model_copy(update={"tenant_id": "globex", "session_id": "s-2"}))
    assert p.judge([RawRecord(b"s-2", other, 0, 9)], states.get).events == 1


def _kill_verdict() -> bytes:
    verdict = Verdict("memory_leak", FailureClass.MEMORY_CORRUPTION, "s-1", "leak", 1, 0, "e-1", 1, 1_001)
    return encode_verdict(verdict, tenant_id="acme", user_id="u-1", agent_id="a1")


def test_a_stage_verdict_kills_only_when_a_worker_signed_it() -> None:
    p = Pipeline(
        DetectorSuite([], clock=lambda: 9_000), SIGNER, lambda: 9_000, verdicts_topic="v", internal=WORKERS
    )
    states: dict[str, SessionState] = {}
    value = _kill_verdict()
    forged = [
        RawRecord(b"s-1", value, 0, 0, "v"),
        RawRecord(
            b"s-1", value, 0, 1, "v", {SIGNATURE_HEADER: RecordSigner(["agent-" + "a" * 30]).sign(value)}
        ),
    ]
    result = p.judge(forged, states.get)
    assert result.kills == []
    assert [(d.code, d.reason) for d in result.dead_letters] == [
        ("bad_stage_verdict", "stage verdict is not signed by a worker"),
        ("bad_stage_verdict", "stage verdict's signature is not a worker's"),
    ]
    genuine = p.judge([RawRecord(b"s-1", value, 0, 2, "v", WORKERS.headers(value))], states.get)
    (kill,) = genuine.kills
    assert (kill.target, kill.detector) == ("s-1", "memory_leak")


def test_the_keyed_stages_judge_only_records_a_worker_signed() -> None:
    judge = StageJudge(settings(), SIGNER, clock=lambda: 1, internal=WORKERS)
    records = [failing_call(n, t=n) for n in range(4)]
    values = [r.to_bytes() for r in records]
    unsigned = judge.judge(
        [RawRecord(r.routing_key, v, 0, 0) for r, v in zip(records, values, strict=True)], {}.get
    )
    assert (unsigned.records, [d.code for d in unsigned.dead_letters]) == (0, ["unsigned"] * 4)
    genuine = judge.judge(
        [
            RawRecord(r.routing_key, v, 0, 0, "", WORKERS.headers(v))
            for r, v in zip(records, values, strict=True)
        ],
        {}.get,
    )
    assert genuine.records == 4
    assert not genuine.dead_letters
    (command,) = genuine.commands  # the tool circuit opened
    assert command.scope == "tool"


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tripwire.yaml"
    path.write_text(f"signing_key: {'k' * 32}\n{body}")
    return path


def test_event_keys_are_configured_per_tenant_and_never_echoed(tmp_path: Path) -> None:
    loaded = load_settings(_config(tmp_path, f"event_signing:\n  tenant_keys:\n    acme: {ACME_NEW}\n"))
    assert [k.get_secret_value() for k in loaded.event_signing.tenant_keys["acme"]] == [ACME_NEW]
    with pytest.raises(ConfigError) as bad:
        load_settings(_config(tmp_path, "event_signing:\n  tenant_keys:\n    acme: [hunter2]\n"))
    assert "event_signing.tenant_keys" in str(bad.value)
    assert "hunter2" not in str(bad.value)


def test_the_internal_key_comes_from_the_private_key_when_there_is_one(tmp_path: Path) -> None:
    from agents_contract import generate_keypair

    private, _ = generate_keypair()
    shared = load_settings(_config(tmp_path, ""))
    strict = load_settings(_config(tmp_path, f"commands:\n  private_key: {private}\n"))
    value = b"[]"
    # An agent that holds the shared signing_key cannot sign what the workers' internal key signs.
    assert internal_signer(shared).sign(value) != internal_signer(strict).sign(value)
    assert internal_signer(strict).problem(value, internal_signer(strict).headers(value)) is None
