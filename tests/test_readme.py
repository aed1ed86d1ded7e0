"""The README's agent example, run as written against a real worker: if the README lies, this fails."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    match = re.search(r"<!-- readme-example -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "README.md lost its <!-- readme-example --> python block"
    return match.group(1)


async def test_the_readme_agent_is_stopped_by_its_step_ceiling(broker: Broker, redis_url: str) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    # The example uses the default topic names, as a user would; no other test does, so they are private.
    async with LocalStack(
        # The quickstart's broker: no security settings (the example has none).
        bootstrap=broker.plain_bootstrap,
        redis_url=redis_url,
        idempotent=broker.idempotent,
        detectors=budget_only(max_steps=20),
    ) as stack:
        # The example loops until killed: a broken kill path fails here instead of hanging.
        async with asyncio.timeout(60):
            outcome = await namespace["main"](
                stack.bootstrap, stack.redis_url, stack.signing_key, idempotent=stack.idempotent
            )
    assert outcome.startswith("stopped by max_steps: session used 21 steps")
