"""`tripwire up` keeps a local stack running that an agent connects to with `dev_stack()`; `tripwire down`
stops it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from agents_contract import AgentGuard, SessionKilled, dev_stack

pytestmark = pytest.mark.integration


def tripwire(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streams", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def same(q: str) -> str:
    return q


async def test_up_serves_agents_until_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "TRIPWIRE_UP_DIR": str(tmp_path)}
    monkeypatch.setenv("TRIPWIRE_UP_DIR", str(tmp_path))
    printed = tripwire("up", env=env)
    state = orjson.loads((tmp_path / "tripwire-up.json").read_bytes())
    try:
        assert state["bootstrap"] in printed
        assert state["signing_key"] not in printed
        assert (tmp_path / "tripwire-up.json").stat().st_mode & 0o077 == 0
        # The command returned; the stack is still there, judging with the default detectors.
        async with (
            AgentGuard(**dev_stack()) as guard,
            guard.session("s-up", agent_id="a", tenant_id="t", user_id="u") as session,
        ):

            async def runaway() -> None:
                for _ in range(10_000):  # instant calls: the SDK still yields to take the kill
                    await session.call_tool("search", {"q": "same"}, same, "same")

            with pytest.raises(SessionKilled) as killed:
                await runaway()
        assert killed.value.command.detector == "repeated_tool_call"
    finally:
        assert "stopped" in tripwire("down", env=env)
    assert not (tmp_path / "tripwire-up.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)
