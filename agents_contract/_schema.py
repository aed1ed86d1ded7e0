"""The contract as JSON Schema, for agents written in other languages (`tripwire schema`)."""

from __future__ import annotations

from typing import Any

from agents_contract._commands import KillCommand
from agents_contract._events import SCHEMA_VERSION, event_json_schema


def contract_json_schema() -> dict[str, Any]:
    """One document: the agent event (any kind) and the kill command, each a JSON Schema."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Tripwire wire contract",
        "schema_version": SCHEMA_VERSION,
        "topics": {
            "agent.events": "AgentEvent, key = session_id",
            "agent.control": "KillCommand, key = target",
        },
        "AgentEvent": event_json_schema(),
        "KillCommand": KillCommand.model_json_schema(),
    }
