"""The sinks' one HTTP seam: every paging service is reached through `HttpTransport.post`.

Sinks build requests and interpret responses; only `AiohttpTransport` touches the network, so delivery logic
is tested with a transport function in place of the network (as httpx's MockTransport does), and for real
against local receivers and a real Alertmanager.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpTransport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse: ...


class DeliveryError(Exception):
    """A delivery that did not succeed. `retryable` errors are tried again (after `retry_after_s` when the
    service said so); the rest (a rejected payload, a bad key) go to the dead-letter topic at once."""

    def __init__(self, reason: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def raise_for_status(service: str, response: HttpResponse) -> None:
    if 200 <= response.status < 300:
        return
    text = response.body[:300].decode(errors="replace")
    retryable = response.status in (408, 425, 429) or response.status >= 500
    raise DeliveryError(
        f"{service} answered HTTP {response.status}: {text}",
        retryable=retryable,
        retry_after_s=retry_after(response.headers.get("Retry-After")) if retryable else None,
    )


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class AiohttpTransport:
    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(url, data=body, headers=dict(headers)) as response:
                return HttpResponse(response.status, dict(response.headers), await response.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"POST {url} failed: {exc!r}", retryable=True) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class FunctionTransport:
    """A transport that calls a function instead of the network: for tests of delivery logic."""

    def __init__(self, handler: Callable[[str, bytes, Mapping[str, str]], Awaitable[HttpResponse]]) -> None:
        self._handler = handler

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        return await self._handler(url, body, headers)
