"""Redis clients from one URL, for the fence, the budget gate and the sinks' ledger.

`redis://`, `rediss://` and `unix://` are redis-py's own URLs. A Redis run under Sentinel for failover is
`redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]` (`rediss+sentinel://` for TLS
to the sentinels and the master alike, with the same `ssl_*` query options as `rediss://`): the client
asks the sentinels which server is the master and asks again when it fails over, so the fence follows a
failover without a restart. The credentials are the master's and are sent to the sentinels too (the usual
setup with ACLs gives both the same users). Redis Cluster is not supported: the budget gate's script
touches keys of several sessions in one call.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
_SENTINEL_PORT: Final = 26379


class RedisHandle:
    """A client and what closing it takes (under Sentinel, the connections to the sentinels as well)."""

    def __init__(self, client: aioredis.Redis, sentinels: list[aioredis.Redis] | None = None) -> None:
        self.client = client
        self._sentinels = sentinels or []

    async def aclose(self) -> None:
        await self.client.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()


def redis_client(url: str, **options: Any) -> RedisHandle:
    """A client for `url` with these connection options (timeouts, retry)."""
    scheme = url.partition("://")[0]
    if scheme not in SENTINEL_SCHEMES:
        return RedisHandle(aioredis.Redis.from_url(url, **options))
    hosts, master, auth = parse_sentinel_url(url)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    # Typed from redis-py 8.2 on, untyped before: called through Any so both check.
    make_sentinel: Any = Sentinel
    sentinel = make_sentinel(hosts, sentinel_kwargs={**sentinel_options, **auth.pop("_sentinel")}, **options)
    client: aioredis.Redis = sentinel.master_for(master, redis_class=aioredis.Redis, **auth)
    return RedisHandle(client, list(sentinel.sentinels))


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """(sentinels, master name, the master's connection options) of a `redis+sentinel://` URL; ValueError
    names what is missing (never the credentials)."""
    parts = urlsplit(url)
    creds, _, where = parts.netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for item in where.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), str(_SENTINEL_PORT)
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not HOST:PORT")
        hosts.append((host.strip("[]"), int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise ValueError("a redis+sentinel:// URL names the master after the hosts: .../MASTER_NAME[/DB]")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a redis+sentinel:// URL's path is /MASTER_NAME or /MASTER_NAME/DB")
    options: dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
    sentinel: dict[str, Any] = {}
    if creds:
        user, colon, password = creds.partition(":")
        login = {"username": unquote(user) or None, "password": unquote(password) if colon else None}
        options.update(login)
        sentinel.update(login)
    if parts.scheme == "rediss+sentinel":
        tls: dict[str, Any] = {"ssl": True}
        for key, value in parse_qsl(parts.query):
            if key.startswith("ssl_"):
                tls[key] = {"true": True, "false": False}.get(value.lower(), value)
        options.update(tls)
        sentinel.update(tls)
    options["_sentinel"] = sentinel
    return hosts, path[0], options
