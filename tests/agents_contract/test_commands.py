"""Kill commands are only obeyed when their signature verifies under the shared key."""

from __future__ import annotations

import orjson
import pytest

from agents_contract import (
    CommandSigner,
    KillCommand,
    encode_command,
    generate_keypair,
    kill_command_id,
    parse_command,
    refusal,
)
from agents_contract._commands import CLOCK_SKEW_MS

KEY = "k" * 32


def _command(**changes: object) -> KillCommand:
    fields: dict[str, object] = {
        "command_id": kill_command_id("s-1", "max_steps"),
        "target": "s-1",
        "reason": "too many steps",
        "detector": "max_steps",
        "evidence": {"steps": 51, "threshold": 50.0},
        "issued_at_ms": 1_700_000_000_000,
        "breach_event_id": "e-9",
        "breach_seq": 9,
    }
    fields.update(changes)
    return KillCommand.model_validate(fields)


def test_signed_command_verifies_after_the_wire_round_trip() -> None:
    signer = CommandSigner(KEY)
    signed = signer.sign(_command())
    assert signer.verify(parse_command(encode_command(signed)))


@pytest.mark.parametrize(
    "tamper", [{"target": "s-2"}, {"reason": "x"}, {"evidence": {"steps": 1}}, {"scope": "tenant"}]
)
def test_any_changed_field_breaks_the_signature(tamper: dict[str, object]) -> None:
    signer = CommandSigner(KEY)
    signed = signer.sign(_command())
    assert not signer.verify(signed.model_copy(update=tamper))


def test_unsigned_and_other_key_commands_do_not_verify() -> None:
    signer = CommandSigner(KEY)
    assert not signer.verify(_command())
    assert not signer.verify(CommandSigner("z" * 32).sign(_command()))


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        CommandSigner("short")


def test_command_ids_are_stable_per_session_and_detector() -> None:
    assert kill_command_id("s-1", "max_steps") == kill_command_id("s-1", "max_steps")
    assert kill_command_id("s-1", "max_steps") != kill_command_id("s-1", "max_cost_usd")


PRIVATE, PUBLIC = generate_keypair()


def test_ed25519_commands_verify_with_the_public_key_alone_and_the_agent_cannot_sign() -> None:
    worker = CommandSigner(KEY, private_key=PRIVATE)
    agent = CommandSigner(public_key=PUBLIC)
    signed = worker.sign(_command())
    assert signed.signature.startswith("ed25519:")
    assert agent.verify(parse_command(encode_command(signed)))
    with pytest.raises(ValueError, match="only verifies"):
        agent.sign(_command())
    # Any change breaks it, and an HMAC signature made with the shared key is no kill to this agent.
    assert not agent.verify(signed.model_copy(update={"target": "s-2"}))
    assert not agent.verify(CommandSigner(KEY).sign(_command()))
    assert not agent.verify(_command(signature="ed25519:" + "A" * 86))
    assert not agent.verify(_command(signature="ed25519:not base64!"))
    other_private, _ = generate_keypair()
    assert not agent.verify(CommandSigner(private_key=other_private).sign(_command()))


def test_while_compatible_a_command_goes_out_in_both_forms_each_for_its_agents() -> None:
    worker = CommandSigner(KEY, private_key=PRIVATE)
    legacy, agent = CommandSigner(KEY), CommandSigner(public_key=PUBLIC)
    hmac_form, ed_form = worker.variants(worker.sign(_command()))
    assert hmac_form.command_id == ed_form.command_id
    assert legacy.verify(hmac_form)
    assert not legacy.verify(ed_form)
    assert agent.verify(ed_form)
    assert not agent.verify(hmac_form)
    # With compatibility off, Ed25519 only, and the workers' own signer no longer believes HMAC.
    strict = CommandSigner(KEY, private_key=PRIVATE, accept_hmac=False)
    assert strict.variants(strict.sign(_command())) == [strict.sign(_command())]
    assert not strict.verify(hmac_form)


@pytest.mark.parametrize(
    ("key", "why"), [("not base64 at all!", "not URL-safe base64"), ("c2hvcnQ", "decodes to 5 bytes")]
)
def test_bad_ed25519_keys_are_refused_naming_the_problem(key: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        CommandSigner(public_key=key)
    with pytest.raises(ValueError, match=r"signing key \(HMAC\) or an Ed25519 key"):
        CommandSigner()


# The fields of a command as the first release's agents parse it (they refuse any other).
FIRST_RELEASE_FIELDS = {
    "schema_version", "command_id", "scope", "target", "tenant_id", "reason", "detector", "evidence",
    "issued_at_ms", "breach_event_id", "breach_seq", "signature",
}  # fmt: skip


def test_ed25519_commands_carry_an_epoch_and_an_expiry_and_the_hmac_copy_neither() -> None:
    worker = CommandSigner(KEY, private_key=PRIVATE, kill_ttl_s=3600, circuit_ttl_s=60)
    kill = worker.sign(_command())
    assert kill.epoch == 0
    assert kill.expires_at_ms == kill.issued_at_ms + 3_600_000
    circuit = worker.sign(_command(scope="tool", target="search"))
    assert circuit.epoch is None
    assert circuit.expires_at_ms == circuit.issued_at_ms + 60_000
    hmac_form, ed_form = worker.variants(kill)
    assert set(orjson.loads(encode_command(hmac_form))) <= FIRST_RELEASE_FIELDS
    assert CommandSigner(KEY).verify(parse_command(encode_command(hmac_form)))
    agent = CommandSigner(public_key=PUBLIC)
    assert agent.verify(parse_command(encode_command(ed_form)))
    # The epoch and the expiry are signed: moving either breaks the signature.
    for tamper in ({"epoch": 1}, {"expires_at_ms": kill.expires_at_ms + 1}):
        assert not agent.verify(ed_form.model_copy(update=tamper))


def test_a_command_bound_to_a_new_epoch_verifies_and_keeps_its_id() -> None:
    worker = CommandSigner(private_key=PRIVATE)
    kill = worker.sign(_command())
    bound = worker.bind(kill, 3)
    assert (bound.epoch, bound.command_id, bound.expires_at_ms) == (3, kill.command_id, kill.expires_at_ms)
    assert CommandSigner(public_key=PUBLIC).verify(bound)
    assert worker.bind(bound, 3) is bound
    hmac_only = CommandSigner(KEY)
    legacy = hmac_only.sign(_command())
    assert hmac_only.bind(legacy, 3) is legacy  # an HMAC command has no epoch to bind


def test_agents_refuse_commands_of_another_epoch_or_past_their_expiry() -> None:
    worker = CommandSigner(KEY, private_key=PRIVATE, kill_ttl_s=3600)
    kill = worker.bind(worker.sign(_command()), 1)
    issued = kill.issued_at_ms
    assert refusal(kill, now_ms=issued, epoch=1) is None
    assert refusal(kill, now_ms=issued, epoch=2) == "stale_epoch"  # released since: a replay
    assert refusal(kill, now_ms=issued, epoch=0) == "stale_epoch"
    assert refusal(kill, now_ms=issued, epoch=None) is None  # the agent could not read its epoch
    assert refusal(kill, now_ms=issued + 3_600_000 + CLOCK_SKEW_MS, epoch=1) is None
    assert refusal(kill, now_ms=issued + 3_600_001 + CLOCK_SKEW_MS, epoch=1) == "expired"
    hmac_form, _ = worker.variants(kill)
    assert refusal(hmac_form, now_ms=issued + 10**12, epoch=5) is None  # the first release's form
    circuit = worker.sign(_command(scope="tool", target="search"))
    assert refusal(circuit, now_ms=issued, epoch=7) is None  # a tool has no session epoch
