"""Connecting to the local stack `tripwire up` started, for development."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson


def dev_stack() -> dict[str, Any]:
    """The `AgentGuard` / `SyncAgentGuard` arguments for the stack `tripwire up` is running (read from its
    state file, in $TRIPWIRE_UP_DIR or the temp directory): `AgentGuard(**dev_stack())`."""
    path = Path(os.environ.get("TRIPWIRE_UP_DIR") or tempfile.gettempdir()) / "tripwire-up.json"
    try:
        state = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RuntimeError(f"no local stack is up ({path} does not exist): run `tripwire up`") from None
    return {
        "bootstrap": state["bootstrap"],
        "redis_url": state["redis_url"],
        "signing_key": state["signing_key"],
        "events_topic": state["events_topic"],
        "control_topic": state["control_topic"],
        "idempotent": state["idempotent"],
    }
