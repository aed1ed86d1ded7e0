"""The fence over TLS with the README's ACL users: agents read it, only workers write it.

A real server with the ACL lines the README gives: on the Kafka tier Debian's redis-server on a TLS port,
with a CA and server certificate made here; the embedded Valkey is built without TLS, so on that tier the
same users are tested on a plain port."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents_contract import CommandSigner, Fence, KillCommand
from streams.lab._embedded import _valkey_binary
from tests._tls import make_pki
from tests.conftest import redis_binary, start_acl_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def acl_redis() -> Iterator[tuple[str, bool]]:
    """(host:port/db and the query that trusts the test CA, whether the server speaks TLS)."""
    binary = redis_binary()
    where = Path(tempfile.mkdtemp(prefix="tripwire-redis-acl-"))
    make_pki(where)
    tls = binary is not None  # Debian's redis-server has TLS; the embedded Valkey has not
    proc, port = start_acl_redis(binary or _valkey_binary(), where, tls=tls)
    try:
        yield (f"localhost:{port}/0?ssl_ca_certs={where / 'ca.pem'}" if tls else f"127.0.0.1:{port}/0"), tls
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(where, ignore_errors=True)


async def test_agents_read_the_fence_over_tls_and_only_workers_write_it(acl_redis: tuple[str, bool]) -> None:
    where, tls = acl_redis
    scheme = "rediss" if tls else "redis"
    worker = Fence(f"{scheme}://worker:worker-pw@{where}")
    agent = Fence(f"{scheme}://agent:agent-pw@{where}")
    kill = CommandSigner("k" * 32).sign(
        KillCommand(command_id="kill-1", target="s-1", reason="runaway", detector="max_steps", issued_at_ms=1)
    )
    try:
        assert await worker.kill([kill]) == {"s-1"}
        held = await agent.lookup("s-1")
        assert held is not None
        assert held.command_id == "kill-1"
        found = await agent.lookup_many(["s-1", "s-2"])
        assert [c.command_id if c else None for c in found] == ["kill-1", None]
        assert await worker.new_epoch("s-2") == 1
        # What an agent reads when it attaches: the kills and the sessions' epochs.
        views = await agent.view_many(["s-1", "s-2"])
        assert [(c.command_id if c else None, epoch) for c, epoch in views] == [("kill-1", 0), (None, 1)]
        with pytest.raises(Exception, match="no permissions"):
            await agent.release("s-1")  # an agent cannot lift its own kill
        with pytest.raises(Exception, match="no permissions"):
            await agent.new_epoch("s-1")  # nor start an epoch that would void it
        with pytest.raises(Exception, match="no permissions"):
            await agent.kill([kill.model_copy(update={"target": "s-2"})])  # nor fence another session
        assert await worker.lookup("s-1") is not None
        if tls:
            untrusting = Fence(f"rediss://agent:agent-pw@{where.partition('?')[0]}")
            try:
                with pytest.raises(Exception, match=r"(?i)certificate"):
                    await untrusting.ping()  # without the CA the server is not trusted
            finally:
                await untrusting.close()
    finally:
        for fence in (worker, agent):
            await fence.close()
