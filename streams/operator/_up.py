"""`tripwire up` / `tripwire down`: a local stack to develop agents against, kept running until stopped.

`up` starts the embedded broker, an embedded Valkey and a worker with the default detectors and the standard
topic names, in a background process of its own, and returns once the worker judges events. What an agent
needs to connect (bootstrap, Redis URL, the signing key, the config the other commands take) is written to
a state file readable only by its owner, and printed without the key. `down` stops that process, which
stops the servers and removes their data. `up --foreground` runs in the terminal until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from streams.lab._stack import LocalStack

_START_TIMEOUT_S = 180.0


def state_path() -> Path:
    """Where `up` writes what a client needs: $TRIPWIRE_UP_DIR, else the temp directory (the SDK's
    `dev_stack()` reads it)."""
    return Path(os.environ.get("TRIPWIRE_UP_DIR") or tempfile.gettempdir()) / "tripwire-up.json"


def read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = orjson.loads(state_path().read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _serve() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    path = state_path()
    async with LocalStack() as stack:
        config = stack.workdir / "tripwire.yaml"
        state = {
            "pid": os.getpid(),
            "bootstrap": stack.bootstrap,
            "redis_url": stack.redis_url,
            "signing_key": stack.signing_key,
            "config": str(config),
            "events_topic": stack.topics["events"],
            "control_topic": stack.topics["control"],
            "metrics_url": stack.metrics_url,
            "idempotent": stack.idempotent,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        os.replace(path.with_suffix(".tmp"), path)
        print(_describe(state), flush=True)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                if (read_state() or {}).get("pid") == os.getpid():
                    path.unlink()


def _describe(state: dict[str, Any]) -> str:
    return "\n".join(
        [
            "tripwire: local stack up (embedded broker, Valkey, one worker with the default detectors)",
            f"  bootstrap   {state['bootstrap']}",
            f"  redis       {state['redis_url']}",
            f"  metrics     {state['metrics_url']}",
            f"  config      {state['config']}   (for tripwire tail/kill/release/incidents --config)",
            f"  state       {state_path()}   (holds the signing key; readable by you only)",
            "  stop it with: tripwire down",
        ]
    )


def run_up(*, foreground: bool) -> int:
    existing = read_state()
    if existing is not None and _alive(int(existing["pid"])):
        print(_describe(existing))
        print("tripwire: already up", file=sys.stderr)
        return 0
    if foreground:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    log = state_path().with_suffix(".log")
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "streams", "up", "--foreground"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state()
        if state is not None and state.get("pid") == child.pid:
            print(_describe(state))
            return 0
        if child.poll() is not None:
            print(f"tripwire: the stack did not start; see {log}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    child.terminate()
    print(f"tripwire: the stack did not start within {_START_TIMEOUT_S:g} s; see {log}", file=sys.stderr)
    return 1


def run_down(timeout_s: float = 60.0) -> int:
    state = read_state()
    if state is None or not _alive(int(state["pid"])):
        state_path().unlink(missing_ok=True)
        print("tripwire: no local stack is up")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    state_path().unlink(missing_ok=True)
    print("tripwire: local stack stopped")
    return 0
