"""The bodies of ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``, decoded by msgspec.

Top-level fields are typed here, so msgspec refuses a wrong type or range (``temperature`` above
1, ``max_tokens`` below 1) in one pass. Messages, content blocks and tools stay plain JSON:
``convert`` walks them itself, to name the offending block the way Anthropic does
(``messages.1.content.0``) and to refuse what herdsman cannot honour with a message that says so.

Unknown fields are ignored (as on every herdsman endpoint), so a client newer than this adapter
keeps working; known fields herdsman cannot honour are declared here only to be refused, with a
400 that names them, in ``convert.check_supported``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from herdsman.protocol.openai import Seed

# Anthropic's ranges (its API refuses a temperature above 1, unlike OpenAI's 2).
Temperature = Annotated[float, Meta(ge=0.0, le=1.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
TopK = Annotated[int, Meta(ge=0, le=2**31 - 1)]
MaxTokens = Annotated[int, Meta(ge=1, le=2**32 - 1)]
BudgetTokens = Annotated[int, Meta(ge=1024)]


class ThinkingConfig(msgspec.Struct, kw_only=True):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: BudgetTokens | None = None
    display: Literal["summarized", "omitted"] | None = None


class ToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Metadata(msgspec.Struct, kw_only=True):
    user_id: str | None = None


class OutputConfig(msgspec.Struct, kw_only=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """What decides the prompt: a count_tokens body, and the base of a messages body."""

    model: str
    messages: list[Any]
    system: str | list[Any] | None = None
    tools: list[Any] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # A prompt-caching hint; the engine's prefix cache needs none, so it changes nothing.
    cache_control: dict[str, Any] | None = None
    # Anthropic's MCP connector: servers whose tools the gateway runs itself (``mcp``).
    mcp_servers: list[Any] | None = None
    # Refused when set (convert.check_supported): nothing here can run code.
    container: Any = None
    # Only its clear_thinking edit is honoured (convert.thinking_turns_kept).
    context_management: Any = None
    # herdsman's extension (vLLM's Anthropic server takes it too): extra template variables.
    chat_template_kwargs: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: MaxTokens
    stop_sequences: list[str] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    metadata: Metadata | None = None
    stream: bool = False
    # One tier here: "auto" and "standard_only" are both what every request gets.
    service_tier: Literal["auto", "standard_only"] | None = None
    # herdsman's extension, as on chat completions: the engine's sampling seed.
    seed: Seed | None = None
