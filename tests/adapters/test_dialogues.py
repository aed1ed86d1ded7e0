"""A healthy dialogue through a real framework under the default detectors: a support agent answering a
user nine times without calling a tool is no monologue, because the adapter reports each run's input as the
user's message. The same answers reported without the user's messages are one (the control, so the test
can fail). A real worker on the test broker judges both; every wait is for a condition."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import START, MessagesState, StateGraph

from agents_contract import Fence
from agents_contract.adapters.langgraph import guard_graph
from streams.lab._stack import LocalStack
from tests.adapters.harness import session_events

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

QUESTIONS = 9  # past monologue's 8 turns


@pytest.fixture(scope="module")
def detectors() -> dict[str, Any]:
    return {}  # the defaults, every detector on


def support_agent() -> Any:
    answers = iter(
        AIMessage(
            content=f"answer {n}: here is what you asked about, step by step",
            usage_metadata={"input_tokens": 400 + 60 * n, "output_tokens": 40, "total_tokens": 440 + 60 * n},
        )
        for n in range(QUESTIONS)
    )
    model = GenericFakeChatModel(messages=answers)

    async def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("support", answer)
    builder.add_edge(START, "support")
    return builder.compile()


async def killed_by(stack: LocalStack, session_id: str) -> str | None:
    await session_events(stack, session_id, lambda es: any(e["kind"] == "session.ended" for e in es))
    await stack.drain()  # every event judged: a kill would be in the fence by now
    fence = Fence(stack.redis_url)
    try:
        kill = await fence.lookup(session_id)
    finally:
        await fence.close()
    return None if kill is None else kill.detector


async def test_a_support_dialogue_through_langgraph_is_not_a_monologue(stack: LocalStack) -> None:
    async with (
        stack.guard() as guard,
        guard.session("s-dialogue", agent_id="support", tenant_id="t", user_id="u") as session,
    ):
        graph = guard_graph(support_agent(), session)
        history: list[Any] = []
        for n in range(QUESTIONS):
            history.append(("user", f"question {n} about my order"))
            result = await graph.ainvoke({"messages": history})
            history = result["messages"]
    assert await killed_by(stack, "s-dialogue") is None


async def test_the_same_answers_without_the_users_messages_are_a_monologue(stack: LocalStack) -> None:
    async with (
        stack.guard() as guard,
        guard.session("s-monologue", agent_id="support", tenant_id="t", user_id="u") as session,
    ):
        for n in range(QUESTIONS):
            session.record_turn("fake", input_tokens=400 + 60 * n, output_tokens=40, output=f"answer {n}")
    assert await killed_by(stack, "s-monologue") == "monologue"
