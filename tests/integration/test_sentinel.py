"""The fence under Redis Sentinel: a `redis+sentinel://` URL finds the master through the sentinels, and
after the master is killed and a replica promoted the same client reads the kills it wrote and writes more.

Real servers: a master, its replica and one sentinel (quorum 1), all Debian's redis-server on the Kafka tier
and the embedded Valkey otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agents_contract import CommandSigner, Fence, KillCommand
from streams import ConfigError, free_port, load_settings
from streams.lab._embedded import _valkey_binary, _wait_for_port
from tests.conftest import redis_binary
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SIGNER = CommandSigner("k" * 32)


def kill(session_id: str) -> KillCommand:
    return SIGNER.sign(
        KillCommand(
            command_id=f"kill-{session_id}",
            target=session_id,
            reason="runaway",
            detector="max_steps",
            issued_at_ms=1,
        )
    )


@dataclass
class Servers:
    master: int
    replica: int
    sentinel: int
    procs: dict[str, subprocess.Popen[bytes]]


def _start(
    binary: str, where: Path, name: str, port: int, lines: list[str], *extra: str
) -> subprocess.Popen[bytes]:
    conf = where / f"{name}.conf"
    conf.write_text("\n".join([f"port {port}", "bind 127.0.0.1", *lines, ""]))
    log = where / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, str(conf), *extra], stdout=out, stderr=subprocess.STDOUT)
    _wait_for_port(port, proc, name, log, 30)
    return proc


@pytest.fixture
def sentinel() -> Iterator[Servers]:
    binary = redis_binary() or _valkey_binary()
    where = Path(tempfile.mkdtemp(prefix="tripwire-sentinel-"))
    ports = Servers(free_port(), free_port(), free_port(), {})
    plain = ['save ""', "appendonly no", f"dir {where}"]
    try:
        ports.procs["master"] = _start(binary, where, "master", ports.master, plain)
        ports.procs["replica"] = _start(
            binary, where, "replica", ports.replica, [*plain, f"replicaof 127.0.0.1 {ports.master}"]
        )
        ports.procs["sentinel"] = _start(
            binary,
            where,
            "sentinel",
            ports.sentinel,
            [
                f"dir {where}",
                f"sentinel monitor fence 127.0.0.1 {ports.master} 1",
                "sentinel down-after-milliseconds fence 1000",
                "sentinel failover-timeout fence 10000",
            ],
            "--sentinel",
        )
        yield ports
    finally:
        for proc in ports.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        shutil.rmtree(where, ignore_errors=True)


async def test_the_fence_follows_a_sentinel_failover(sentinel: Servers) -> None:
    fence = Fence(f"redis+sentinel://127.0.0.1:{sentinel.sentinel}/fence/0")
    replica = aioredis.Redis(port=sentinel.replica)
    watcher = aioredis.Redis(port=sentinel.sentinel)
    try:
        assert await fence.kill([kill("s-before")]) == {"s-before"}
        assert (await fence.lookup("s-before")) == kill("s-before")

        async def replicated() -> bool:
            return bool(await replica.exists("tripwire:fence:session:s-before"))

        async def replica_known() -> bool:
            return bool(await watcher.execute_command("SENTINEL", "REPLICAS", "fence"))

        await wait_for("the kill on the replica", replicated)
        await wait_for("the sentinel to know the replica", replica_known)
        os.kill(sentinel.procs["master"].pid, signal.SIGKILL)
        sentinel.procs["master"].wait(timeout=10)

        async def promoted() -> bool:
            _host, port = await watcher.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "fence")
            return int(port) == sentinel.replica

        await wait_for("the sentinel to promote the replica", promoted)

        async def answers() -> bool:
            try:
                return await fence.kill([kill("s-after")]) == {"s-after"}
            except Exception:  # the client's old connection was to the dead master: it asks again
                return False

        await wait_for("a fence write to reach the new master", answers)
        assert await fence.lookup_many(["s-before", "s-after"]) == [kill("s-before"), kill("s-after")]
    finally:
        for client in (replica, watcher):
            await client.aclose()
        await fence.close()


def test_a_sentinel_url_without_a_master_name_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "tripwire.yaml"
    config.write_text(f"signing_key: {'k' * 32}\nredis:\n  url: redis+sentinel://ops:hunter2@h1:26379,h2\n")
    with pytest.raises(ConfigError) as bad:
        load_settings(config)
    assert "redis.url" in str(bad.value)
    assert "MASTER_NAME" in str(bad.value)
    assert "hunter2" not in str(bad.value)
    config.write_text(f"signing_key: {'k' * 32}\nredis:\n  url: redis+sentinel://h1:26379,h2/fence/2\n")
    assert load_settings(config).redis.url.endswith("/fence/2")
