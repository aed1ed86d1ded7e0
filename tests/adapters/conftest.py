"""The adapter tests' stack: one worker per test module (each test has sessions of its own, and a worker takes
seconds to start) on private topics, judging with the detectors of the module's `detectors` fixture (by
default the session budget alone, `max_steps=5`; a module overrides the fixture for other limits).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker


@pytest.fixture(scope="module")
def detectors() -> dict[str, Any]:
    return budget_only(max_steps=5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(broker: Broker, redis_url: str, detectors: dict[str, Any]) -> AsyncIterator[LocalStack]:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=detectors,
        private_topics=True,
    ) as s:
        yield s
