"""`tripwire inventory`: the failure categories a configuration covers, in its own numbers, and its gaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detectors import DetectorSettings
from streams.operator._cli import main
from streams.operator._inventory import CATEGORIES, Entry, inventory, render, render_markdown


def _entry(settings: DetectorSettings, key: str) -> Entry:
    (entry,) = [e for e in inventory(settings) if e.category.key == key]
    return entry


def test_every_known_category_is_listed_and_the_defaults_leave_three_uncovered() -> None:
    entries = inventory(DetectorSettings())
    assert [e.category.title for e in entries] == [c.title for c in CATEGORIES]
    assert len(entries) == 12
    uncovered = [e.category.key for e in entries if e.status == "not covered"]
    assert uncovered == ["rogue_actions", "silent_degradation", "contract_violations"]
    assert _entry(DetectorSettings(), "context_blindness").status == "covered"  # the scope rule kills
    # Every detector section of the settings reveals some category: none is left out of the inventory.
    sections = {name for c in CATEGORIES for name in c.sections}
    not_detectors = {"allowed_lateness_ms", "intake", "tenants", "agents"}
    assert sections == set(DetectorSettings.model_fields) - not_detectors


def test_the_words_carry_this_configurations_thresholds_and_modes() -> None:
    settings = DetectorSettings.model_validate(
        {
            "repeated_tool_call": {"count": 7, "window_s": 120, "same_result_count": None},
            "session_budget": {"max_cost_usd": 2.5, "max_tokens": None},
            "memory_write_amplification": {"mode": "enforce"},
        }
    )
    loops = _entry(settings, "runaway_loops")
    (repeated,) = [c for c in loops.covers if c.detector == "repeated_tool_call"]
    assert repeated.says == "one tool called with the same arguments 7 times within 2 min"
    cost = _entry(settings, "cost_spikes")
    (budget,) = [c for c in cost.covers if c.detector == "session_budget"]
    assert budget.says == "a session spending more than $2.50"
    assert _entry(settings, "memory_write_amplification").status == "covered"
    text = render(inventory(settings), source="x.yaml")
    assert "[enforce] repeated_tool_call: we would know from one tool called with the same arguments" in text
    assert "Paged but never stopped" not in text  # memory write amplification now kills


def test_a_category_watched_only_in_shadow_mode_or_switched_off_is_a_gap() -> None:
    shadow = DetectorSettings.model_validate(
        {"error_burst": {"mode": "shadow"}, "error_propagation": {"enabled": False}}
    )
    assert _entry(shadow, "cascading_errors").status == "shadow only"
    off = DetectorSettings.model_validate(
        {"context_blowup": {"max_context_tokens": None, "growth_factor": None}}
    )
    assert _entry(off, "context_blowup").status == "not covered"
    text = render(inventory(shadow), source="x.yaml")
    assert "Not covered (nobody would be told): cascading errors, rogue actions" in text
    assert "(counted only, nobody is told)" in text


def test_overrides_that_weaken_a_category_are_named() -> None:
    settings = DetectorSettings.model_validate(
        {
            "tenants": {"acme": {"stall": {"enabled": False}}},
            "agents": {"coder": {"deadlock": {"mode": "warn"}}},
        }
    )
    entry = _entry(settings, "multi_agent_deadlock")
    assert entry.weakened == ("tenant acme: stall off", "agent coder: deadlock in warn mode")
    assert _entry(settings, "cost_spikes").weakened == ()


def test_markdown_is_a_checklist_with_one_section_per_category() -> None:
    md = render_markdown(inventory(DetectorSettings()), source="the default configuration")
    assert md.startswith("# Failure-mode inventory of the default configuration\n")
    assert "| rogue actions | not covered | none |" in md
    assert md.count("\n## ") == 12
    assert "- **tool_circuit** (enforce: refuses the tool while open and pages)" in md


def test_the_command_reads_the_detectors_of_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tripwire.yaml"
    config.write_text(yaml.safe_dump({"detectors": {"monologue": {"turns": 12, "mode": "warn"}}}))
    assert main(["inventory", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Failure-mode inventory of {config}")
    assert "[warn] monologue: we would know from an agent taking 12 turns in a row" in out
    assert main(["inventory", "--markdown"]) == 0
    assert "| runaway loops | covered |" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"detectors": {"monologue": {"turns": 1}}}))
    assert main(["inventory", "--config", str(config)]) == 2
    assert "detectors.monologue.turns" in capsys.readouterr().err
