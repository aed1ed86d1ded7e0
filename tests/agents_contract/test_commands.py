"""Kill commands are only obeyed when their signature verifies under the shared key."""

from __future__ import annotations

import pytest

from agents_contract import CommandSigner, KillCommand, encode_command, kill_command_id, parse_command

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
