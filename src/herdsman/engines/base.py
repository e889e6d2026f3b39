"""What the gateway needs from an inference engine, independent of its wire protocol.

Adapters translate these structs to and from one proto each. They are msgspec structs because one
``EngineOutput`` is made per streamed engine message, on the hottest path of the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from herdsman.engines.transport.base import DECLINED, ENOUGH, TAKEN

if TYPE_CHECKING:
    from smg_grpc_proto.generated import common_pb2

    from herdsman.routing.load import WorkerLoad


class SamplingParams(msgspec.Struct, kw_only=True):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    n: int = 1
    # Top alternatives per generated token; None: no logprobs at all, 0: the sampled token's only.
    logprobs: int | None = None
    # Logprobs of the prompt's tokens with this many alternatives; None: not wanted.
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    # Structured output: (json_schema | json_object | regex | grammar | structural_tag, value).
    constraint: tuple[str, str] | None = None


class Bootstrap(msgspec.Struct, frozen=True):
    """Where an SGLang decode worker fetches a request's KV cache from its prefill worker (the
    prefill's bootstrap server), and the room that names the request there."""

    host: str
    port: int
    room: int


class EngineRequest(msgspec.Struct, kw_only=True):
    request_id: str
    input_ids: list[int]
    sampling: SamplingParams
    stream: bool = True
    # Seconds the engine has for this request (its gRPC deadline); None: no deadline.
    timeout: float | None = None
    # The data-parallel rank of the engine that must serve it (None: the engine chooses).
    data_parallel_rank: int | None = None
    # Processed images (herdsman.pipeline.images.ImageInputs); typed loosely to keep this
    # module free of numpy.
    images: Any = None
    # Disaggregated serving. SGLang: the bootstrap room, sent to the prefill and the decode.
    bootstrap: Bootstrap | None = None
    # vLLM: the KV connector's parameters as a JSON object (a prefill's request for remote
    # decode, or what the prefill returned, for the decode).
    kv_transfer_params: str | None = None


class EmbedRequest(msgspec.Struct, kw_only=True):
    """One input of a pooling model (an embedding, or a classifier's logits)."""

    request_id: str
    input_ids: list[int]
    # BERT-style pair encodings (a cross-encoder's query and document): the segment of each id.
    # Only sglang_scheduler.proto carries them.
    token_type_ids: list[int] | None = None
    timeout: float | None = None
    data_parallel_rank: int | None = None


class EmbedOutput(msgspec.Struct, gc=False):
    """What the engine's pooler returned: an embedding, or a classifier's raw scores."""

    # A float32 numpy array (typed loosely to keep this module free of numpy).
    values: Any
    prompt_tokens: int


class TokenLogprobs(msgspec.Struct, gc=False):
    """Logprobs of a run of generated tokens: one entry per token, alternatives best first."""

    token_ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]


class PromptLogprobs(msgspec.Struct, gc=False):
    """Logprobs of the prompt's tokens; the first token has none (nothing precedes it)."""

    token_ids: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]]]


class EngineOutput(msgspec.Struct, kw_only=True, gc=False):
    """New tokens for one choice; ``finish_reason`` is set on the last output of that choice."""

    index: int
    token_ids: list[int]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    matched_token_id: int | None = None
    matched_stop_str: str | None = None
    logprobs: TokenLogprobs | None = None
    # Sent once per choice, with its first output, when the request asked for them.
    prompt_logprobs: PromptLogprobs | None = None
    # vLLM prefill workers: the KV connector's handoff for the decode worker (a JSON object).
    kv_transfer_params: str | None = None


class ModelInfo(msgspec.Struct, kw_only=True):
    model_path: str = ""
    served_model_name: str = ""
    tokenizer_path: str = ""
    model_type: str = ""
    architectures: list[str] = msgspec.field(default_factory=list)
    max_context_length: int = 0
    vocab_size: int = 0
    eos_token_ids: list[int] = msgspec.field(default_factory=list)
    bos_token_id: int | None = None
    supports_vision: bool = False
    # Pooling models (embedding, classification) do not generate.
    is_generation: bool = True
    # Classifiers: their labels by class index (SGLang states them; vLLM's proto does not).
    num_labels: int = 0
    id2label: dict[str, str] = msgspec.field(default_factory=dict)


class EngineError(RuntimeError):
    """The engine failed a call. ``code`` is the gRPC status name, lower case."""

    def __init__(self, message: str, *, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


class EngineUnavailable(EngineError):
    """The engine cannot be reached (connection refused, lost, or keepalive unanswered)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unavailable")


class EngineBusy(EngineError):
    """The engine refused the call for lack of capacity (RESOURCE_EXHAUSTED, a refused stream):
    back-pressure, not a failure; the same call may succeed later or elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="resource_exhausted")


class EngineDeadlineExceeded(EngineError):
    """The call's deadline passed before the engine finished it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="deadline_exceeded")


# The push path: a generation may hand ``generate`` a sink that is offered each plain streamed
# output (new ids and counts, nothing else) as it arrives, in the engine connection's callback,
# while the generator waits with nothing queued. It answers DECLINED (the generator yields the
# output as usual), TAKEN (handled; not yielded), or ENOUGH (handled, and the generation wants
# no more: the generator ends and the engine call is cancelled).
OutputSink = Callable[["EngineOutput"], int]
PUSH_DECLINED, PUSH_TAKEN, PUSH_ENOUGH = DECLINED, TAKEN, ENOUGH


class EngineClient(Protocol):
    backend: str
    address: str

    # What the engine's Embed RPC can run: "embed", and "classify" where the protocol lets the
    # model's own head (a classifier's) pool the input.
    pooling_tasks: frozenset[str]

    def generate(
        self, request: EngineRequest, push: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        """The request's outputs; ``push``: see OutputSink (an engine may never offer any)."""
        ...

    async def embed(self, request: EmbedRequest) -> EmbedOutput: ...

    async def abort(self, request_ids: list[str]) -> None: ...

    async def health_check(self, timeout: float) -> bool: ...

    async def model_info(self) -> ModelInfo: ...

    async def server_info(self) -> dict[str, object]: ...

    async def fetch_tokenizer(self) -> tuple[bytes, str]:
        """The worker's tokenizer directory as zip bytes, and the sha256 the engine announced."""
        ...

    def subscribe_kv_events(self, start_sequence: int) -> AsyncIterator[common_pb2.KvEventBatch]:
        """The engine's KV-event stream from ``start_sequence`` (0: from its current state), with
        no deadline. Raises EngineError(code="unimplemented") when the engine publishes none."""
        ...

    async def get_loads(self) -> list[tuple[int, WorkerLoad]]:
        """The engine's load per data-parallel rank (GetLoads), as (dp_rank, load)."""
        ...

    async def close(self) -> None: ...
