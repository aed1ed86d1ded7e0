"""A worker in a child process, for the demo, the benchmarks and the integration tests.

Running the worker as its own process is how operators run it, and it lets a test kill it with SIGKILL and
start another on the same state. Readiness is the worker's own signal (a rebalance-complete mark in Redis),
not a guess about how long start-up takes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agents_contract import Fence


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


class WorkerProcess:
    def __init__(
        self,
        config: Path,
        *,
        app_id: str,
        redis_url: str,
        log_path: Path,
        command: tuple[str, ...] = ("worker",),
    ) -> None:
        self.config = config
        self.command = command
        self.app_id = app_id
        self.redis_url = redis_url
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *self.command, "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

    async def wait_ready(self, *, since_ms: int, timeout_s: float = 90.0) -> None:
        """Wait until this app's workers have completed a rebalance after `since_ms`."""
        fence = Fence(self.redis_url)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited with {self._proc.returncode}; its log:\n{self.log_tail()}"
                    )
                ready = await fence.worker_ready_at(self.app_id)
                if ready is not None and ready >= since_ms:
                    return
                await asyncio.sleep(0.1)
            raise TimeoutError(f"worker not ready within {timeout_s:g}s; its log:\n{self.log_tail()}")
        finally:
            await fence.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the worker is not running"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait (Faust flushes and commits); SIGKILL if it does not go."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        code = self._proc.returncode
        self._proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group, as in a crash."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
