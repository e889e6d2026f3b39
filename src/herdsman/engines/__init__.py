"""Engine clients: one interface, one adapter per gRPC protocol of smg-grpc-proto."""

from herdsman.engines.base import (
    Bootstrap,
    EmbedOutput,
    EmbedRequest,
    EngineBusy,
    EngineClient,
    EngineDeadlineExceeded,
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    ModelInfo,
    PromptLogprobs,
    SamplingParams,
    TokenLogprobs,
)
from herdsman.engines.connect import BACKENDS, connect_engine

__all__ = [
    "BACKENDS",
    "Bootstrap",
    "EmbedOutput",
    "EmbedRequest",
    "EngineBusy",
    "EngineClient",
    "EngineDeadlineExceeded",
    "EngineError",
    "EngineOutput",
    "EngineRequest",
    "EngineUnavailable",
    "ModelInfo",
    "PromptLogprobs",
    "SamplingParams",
    "TokenLogprobs",
    "connect_engine",
]
