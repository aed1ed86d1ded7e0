"""Kill commands are only obeyed when their signature verifies under the shared key."""

from __future__ import annotations

import pytest

from agents_contract import (
    CommandSigner,
    KillCommand,
    encode_command,
    generate_keypair,
    kill_command_id,
    parse_command,
)

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
