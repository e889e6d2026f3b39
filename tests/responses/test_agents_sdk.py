"""The OpenAI Agents SDK's Responses model running a two-turn tool-using agent through herdsman.

The engine-sim answers a Qwen3 tool call to the first turn and, once the prompt ends in the
tool's result (``--response-text-after-tool``), a text answer: so the agent's final output is
that text only if herdsman rendered the function call and its output into the second prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelResponse,
    OpenAIResponsesModel,
    RunItemStreamEvent,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.result import RunResultBase
from openai import AsyncOpenAI
from openai.types.responses import ResponseTextDeltaEvent
from tests.conftest import QWEN3, start_gateway
from tests.responses.conftest import MODEL, fast_sim, sqlite_url

INSTRUCTIONS = "You are a calculator. Use the add tool."
QUESTION = "What is 17 + 25?"
ARGUMENTS = {"a": 17, "b": 25}
CALL_TEXT = f'<tool_call>\n{{"name": "add", "arguments": {json.dumps(ARGUMENTS)}}}\n</tool_call>'
ANSWER = "17 plus 25 is 42."
MODES = ["run", "streamed", "previous_response_id", "conversation"]


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store: Path = tmp_path_factory.mktemp("agents-store")
    sim = fast_sim("--response-text", CALL_TEXT, "--response-text-after-tool", ANSWER)
    gateway = start_gateway(
        sim.address, extra=("--model-path", str(QWEN3), "--storage", sqlite_url(store))
    )
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def calculator() -> tuple[FunctionTool, list[tuple[int, int]]]:
    """The ``add`` tool, and the list of the calls it received."""
    calls: list[tuple[int, int]] = []

    @function_tool
    def add(a: int, b: int) -> str:
        """Add two integers.

        Args:
            a: The first addend.
            b: The second addend.
        """
        calls.append((a, b))
        return str(a + b)

    return add, calls


def chat_prompt_tokens(base_url: str, tool: FunctionTool, call_id: str) -> int:
    """Herdsman's chat-completion prompt size of the agent's second turn, as chat messages."""
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "add", "arguments": json.dumps(ARGUMENTS)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "42"},
    ]
    function = {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.params_json_schema,
        "strict": tool.strict_json_schema,
    }
    data = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": messages,
            "tools": [{"type": "function", "function": function}],
            "max_tokens": 4,
        },
        timeout=30,
    ).json()
    return int(data["usage"]["prompt_tokens"])


async def run_agent(
    client: AsyncOpenAI, agent: Agent[Any], mode: str
) -> tuple[RunResultBase, list[str]]:
    """The agent's run in ``mode``, and the names of the run-item events streamed (if any)."""
    if mode == "streamed":
        streamed = Runner.run_streamed(agent, QUESTION)
        names: list[str] = []
        deltas: list[str] = []
        async for event in streamed.stream_events():
            if isinstance(event, RunItemStreamEvent):
                names.append(event.name)
            elif event.type == "raw_response_event" and isinstance(
                event.data, ResponseTextDeltaEvent
            ):
                deltas.append(event.data.delta)
        assert "".join(deltas) == ANSWER
        return streamed, names
    if mode == "previous_response_id":
        return await Runner.run(agent, QUESTION, auto_previous_response_id=True), []
    if mode == "conversation":
        conversation = await client.conversations.create()
        return await Runner.run(agent, QUESTION, conversation_id=conversation.id), []
    return await Runner.run(agent, QUESTION), []


@pytest.mark.parametrize("mode", MODES)
async def test_agent_calls_the_tool_then_answers_from_its_output(agent_url: str, mode: str) -> None:
    set_tracing_disabled(True)
    tool, calls = calculator()
    async with AsyncOpenAI(base_url=f"{agent_url}/v1", api_key="unused", max_retries=0) as client:
        agent: Agent[Any] = Agent(
            name="calculator",
            instructions=INSTRUCTIONS,
            tools=[tool],
            model=OpenAIResponsesModel(MODEL, client),
        )
        result, streamed_names = await run_agent(client, agent, mode)

    # The tool ran once, with the arguments of the model's call.
    assert calls == [(17, 25)]
    # Turn one: a function call; turn two: the text the engine gives only after a tool result.
    assert len(result.raw_responses) == 2
    first, second = result.raw_responses
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == ("add", ARGUMENTS)
    [message] = second.output
    assert message.type == "message"
    assert result.final_output == ANSWER
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert result.new_items[1].output == "42"
    if mode == "streamed":
        assert streamed_names == ["tool_called", "tool_output", "message_output_created"]

    # The second prompt is the chat rendering of the question, the call and the tool's output.
    assert_usage(first, second)
    assert second.usage.input_tokens == chat_prompt_tokens(agent_url, tool, call.call_id)
    # What the SDK sent on the second turn: everything, or (continuing a stored response or a
    # conversation) only the tool's output, herdsman supplying the rest from its store.
    sent = httpx.get(
        f"{agent_url}/v1/responses/{second.response_id}/input_items",
        params={"order": "asc"},
        timeout=30,
    ).json()["data"]
    if mode in ("previous_response_id", "conversation"):
        assert [item["type"] for item in sent] == ["function_call_output"]
    else:
        assert [item["type"] for item in sent] == [
            "message",
            "function_call",
            "function_call_output",
        ]
    assert sent[-1]["call_id"] == call.call_id
    assert sent[-1]["output"] == "42"


def assert_usage(first: ModelResponse, second: ModelResponse) -> None:
    assert first.usage.requests == second.usage.requests == 1
    assert first.usage.output_tokens > 0 and second.usage.output_tokens > 0
    # The second prompt holds the first one's question plus the call and its output.
    assert second.usage.input_tokens > first.usage.input_tokens
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
