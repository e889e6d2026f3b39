"""The body of ``POST /v1/responses``, decoded and checked in one pass by msgspec.

Unknown fields are ignored (as OpenAI does); known ones herdsman cannot honour are refused in
``items``/``adapter`` with a 400 that names them, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from herdsman.protocol.openai import Temperature, TopLogprobs, TopP

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ReasoningOptions(msgspec.Struct, omit_defaults=True):
    effort: Effort | None = None
    summary: str | None = None
    generate_summary: str | None = None


class TextOptions(msgspec.Struct, omit_defaults=True):
    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # The SDK sends null for these booleans when unset: null is the default.
    parallel_tool_calls: bool | None = True
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: TopLogprobs | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # None: the client did not say (stored when storage is configured, as OpenAI's default).
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = False
    stream: bool | None = False
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    # Extensions vLLM's Responses server takes as well.
    seed: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    top_k: Annotated[int, Meta(ge=-1)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.parallel_tool_calls is None:
            self.parallel_tool_calls = True
        self.background = bool(self.background)
        self.stream = bool(self.stream)
