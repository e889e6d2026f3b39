"""OpenAI request bodies, decoded and validated in one pass by msgspec.

Unknown fields are ignored, as the OpenAI API and vLLM do; known fields we cannot honour yet are
rejected explicitly in ``validate_*`` so a client never silently gets something else.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
# What the engine protocols carry: token ids and counts are uint32, the seed an int32.
TokenId = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Seed = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
# -1 and 0 both mean "no top-k" (as vLLM takes them).
TopK = Annotated[int, Meta(ge=-1, le=2**31 - 1)]
ChoiceCount = Annotated[int, Meta(ge=1, le=128)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    n: ChoiceCount = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    ignore_eos: bool = False
    min_tokens: Count = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    no_stop_trim: bool = False  # SGLang's name for include_stop_str_in_output
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    # vLLM's extension: the prompt's and each choice's token ids in the response.
    return_token_ids: bool = False


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[dict[str, Any]]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # OpenAI's reasoning switch; the template sees it (and enable_thinking follows it).
    reasoning_effort: str | None = None
    # vLLM's extension: the answer starts with the last message's text when that message has
    # the answer's role (continuing an assistant turn).
    echo: bool = False
    # False: the reasoning stays in `content` (SGLang's and SMG's request option).
    separate_reasoning: bool = True
    # Structured-output extensions of vLLM and SGLang.
    guided_json: Any = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    regex: str | None = None
    ebnf: str | None = None

    @property
    def extensions(self) -> dict[str, Any]:
        return {
            "guided_json": self.guided_json,
            "guided_regex": self.guided_regex,
            "guided_grammar": self.guided_grammar,
            "regex": self.regex,
            "ebnf": self.ebnf,
        }


class CompletionRequest(SamplingFields, kw_only=True):
    logprobs: TopLogprobs | None = None
    # str, list of str, list of ids or list of id lists: msgspec unions allow one array type.
    prompt: str | list[Any]
    max_tokens: PositiveInt | None = 16
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
