"""The Anthropic request -> chat request conversion on its own: what each block becomes."""

from __future__ import annotations

import json

import msgspec
import pytest

from herdsman.api.messages.convert import chat_messages, to_chat
from herdsman.api.messages.protocol import MessagesRequest, Metadata, ThinkingConfig, ToolChoice
from herdsman.pipeline.errors import InvalidRequest

# tool_use input as chat arguments: its JSON (as the client wrote it, not \u-escaped).
ZURICH = json.dumps({"city": "Zürich"}, ensure_ascii=False)


def test_tool_results_come_first_and_in_order() -> None:
    messages, prefill = chat_messages(
        None,
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two cities.", "signature": "x"},
                    {"type": "redacted_thinking", "data": "b3BhcXVl"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"city": "Zürich"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "f", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here:"},
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12 °C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_b",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                        "is_error": True,
                    },
                ],
            },
        ],
    )
    assert not prefill
    assert messages == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            # Redacted thinking is opaque: left out of the prompt.
            "reasoning_content": "Two cities.",
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "f", "arguments": ZURICH},
                },
                {"id": "toolu_b", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "12 °C"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: a\nb"},
        {"role": "user", "content": "Here:"},
    ]


def test_system_turns_and_prefill() -> None:
    messages, prefill = chat_messages(
        [{"type": "text", "text": "Be brief."}],
        [
            {"role": "system", "content": "And kind."},
            {"role": "user", "content": "Hi."},
            {"role": "user", "content": [{"type": "text", "text": "Again."}]},
            {"role": "assistant", "content": "Hello"},
        ],
    )
    assert prefill
    assert messages == [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "And kind."},
            ],
        },
        # Consecutive turns of one role are one turn, as Anthropic combines them.
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi."}, {"type": "text", "text": "Again."}],
        },
        {"role": "assistant", "content": "Hello"},
    ]
    # An empty last assistant turn continues nothing: an ordinary generation prompt.
    messages, prefill = chat_messages(
        None, [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": []}]
    )
    assert not prefill and messages == [{"role": "user", "content": "Hi."}]


def test_images_are_image_url_parts() -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    messages, _ = chat_messages(
        None,
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": source},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                    {"type": "text", "text": "Compare."},
                ],
            }
        ],
    )
    assert messages[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "Compare."},
    ]


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([{"role": "tool", "content": "x"}], "messages.0.role"),
        (
            [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            "messages.0.content.0.type",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ],
            "messages.0.content.0.source",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": "x"},
                        }
                    ],
                }
            ],
            "messages.0.content.0.source.media_type",
        ),
        (
            [
                {"role": "user", "content": "Hi."},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
            ],
            "messages.1",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [{"type": "image", "source": {}}],
                        }
                    ],
                }
            ],
            "messages.0.content.0.content.0.type",
        ),
    ],
)
def test_refusals_name_the_block(messages: list[dict], where: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        chat_messages(None, messages)
    assert refused.value.param == where
    assert refused.value.message.startswith(f"{where}: ")


OBJECT = {"type": "object"}


def test_request_fields() -> None:
    body = MessagesRequest(
        model="m",
        max_tokens=2000,
        messages=[{"role": "user", "content": "Hi."}],
        tools=[{"name": "f", "input_schema": OBJECT, "cache_control": {"type": "ephemeral"}}],
        stop_sequences=["END", ""],
        metadata=Metadata(user_id="u-1"),
    )
    chat = to_chat(body, "m")
    assert chat.tools == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert chat.stop == ["END"] and chat.user == "u-1"
    assert chat.chat_template_kwargs is None and chat.add_generation_prompt
    for choice, expected in [
        (ToolChoice(type="auto"), "auto"),
        (ToolChoice(type="any"), "required"),
        (ToolChoice(type="tool", name="f"), {"type": "function", "function": {"name": "f"}}),
        (ToolChoice(type="none"), "none"),
    ]:
        chat = to_chat(msgspec.structs.replace(body, tool_choice=choice), "m")
        assert chat.tool_choice == expected
    for thinking, switch in [("enabled", True), ("adaptive", True), ("disabled", False)]:
        budget = 1024 if thinking == "enabled" else None
        config = ThinkingConfig(type=thinking, budget_tokens=budget)
        chat = to_chat(msgspec.structs.replace(body, thinking=config), "m")
        assert chat.chat_template_kwargs == {"enable_thinking": switch}
    with pytest.raises(InvalidRequest, match="forces tool use"):
        forced = msgspec.structs.replace(
            body, tool_choice=ToolChoice(type="any"), thinking=ThinkingConfig(type="adaptive")
        )
        to_chat(forced, "m")
