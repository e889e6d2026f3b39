"""The pooling model engine-sim serves with --pooling: what its Embed RPC returns, and why.

A weightless stand-in for a BERT encoder, cheap enough to run on the event loop for ordinary
inputs and a pure function of (ids, token types, size, seed), so a gateway test computes the
vector it expects with `embed_values` / `classify_logits` without talking to the sim:

- every token id has a pseudo-random vector, uniform in [-1, 1) per component. It is a counter
  hash (splitmix64) of (seed, id, component) computed on demand: no vocab x dim table is built
  at start or held in memory, and any vocabulary size costs the same;
- token type t scales the components by its own fixed vector (1 + 0.5 u_t), so the two segments
  of a BERT pair encoding pool differently. A type vector is never *added*: a term shared by
  every token would dominate the mean of long inputs and make all embeddings alike;
- position i scales them by 1 + 0.2 pe_i (the sinusoidal encoding of "Attention Is All You
  Need"), so the same ids in another order give another vector;
- mean pooling over positions, then L2 normalisation (vLLM's default for embedding models);
- a classifier returns raw logits: a fixed pseudo-random (num_labels x dim) projection of that
  normalised vector. No softmax or sigmoid: which activation applies is the gateway's call.

Results are float32 values as Python floats, exactly what the float fields of EmbedResponse
carry, so a test can compare them with `==`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# The defaults and architectures live in options: the CLI's help shows them without numpy.
from herdsman.sim.options import (
    ARCHITECTURES,
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_NUM_LABELS,
    Pooling,
    SimOptions,
)

# BERT's type_vocab_size: a pair encoding's segment 0 and segment 1.
TYPE_VOCAB_SIZE = 2

_POSITION_WEIGHT = 0.2
_TYPE_WEIGHT = 0.5
# Logits of a unit vector through uniform [-1, 1) weights have a spread of ~0.6; scaled so a
# classifier's probabilities look decided rather than all near 1/num_labels.
_LOGIT_SCALE = 4.0
# Inputs above this many values (ids x dim) are pooled in a thread, off the event loop.
OFFLOAD_CELLS = 1 << 18
# Independent hash streams: token vectors, type vectors and the classifier never share values.
_TOKEN_STREAM = 1
_TYPE_STREAM = 2
_CLASSIFIER_STREAM = 3
_MASK64 = (1 << 64) - 1


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    # uint64 array arithmetic wraps modulo 2**64, which is what the mixer relies on.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform_rows(
    seed: int, stream: int, keys: NDArray[np.uint64], dim: int
) -> NDArray[np.float64]:
    """Row r: `dim` values uniform in [-1, 1), a function of (seed, stream, keys[r], column)."""
    state = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    state = _splitmix64(state ^ np.uint64(stream))
    rows = _splitmix64(keys ^ state)
    cells = _splitmix64(rows[:, None] ^ np.arange(dim, dtype=np.uint64)[None, :])
    # The top 53 bits as a double in [0, 1), stretched to [-1, 1).
    return (cells >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0


def _position_scale(length: int, dim: int) -> NDArray[np.float64]:
    positions = np.arange(length, dtype=np.float64)[:, None]
    columns = np.arange(dim)
    angles = positions * 10000.0 ** (-(columns - columns % 2) / dim)
    encoding = np.where(columns % 2 == 0, np.sin(angles), np.cos(angles))
    return 1.0 + _POSITION_WEIGHT * encoding


def _pooled(
    ids: Sequence[int], token_type_ids: Sequence[int] | None, dim: int, seed: int
) -> NDArray[np.float64]:
    """The L2-normalised mean-pooled vector of `ids`."""
    if not ids:
        raise ValueError("no input ids to pool")
    hidden = _uniform_rows(seed, _TOKEN_STREAM, np.asarray(ids, dtype=np.uint64), dim)
    type_scales = 1.0 + _TYPE_WEIGHT * _uniform_rows(
        seed, _TYPE_STREAM, np.arange(TYPE_VOCAB_SIZE, dtype=np.uint64), dim
    )
    # No token types means all segment 0, as in BERT.
    types = np.zeros(len(ids), dtype=np.intp) if token_type_ids is None else token_type_ids
    hidden *= type_scales[np.asarray(types, dtype=np.intp)]
    hidden *= _position_scale(len(ids), dim)
    pooled = hidden.mean(axis=0)
    norm = float(np.linalg.norm(pooled))
    return pooled / norm if norm > 0.0 else pooled


def _wire_floats(values: NDArray[np.float64]) -> list[float]:
    values32: list[float] = values.astype(np.float32).tolist()
    return values32


def embed_values(
    ids: Sequence[int],
    token_type_ids: Sequence[int] | None = None,
    dim: int = DEFAULT_EMBEDDING_DIM,
    seed: int = 0,
) -> list[float]:
    """The embedding a `--pooling embed --embedding-dim dim --seed seed` sim returns for `ids`
    (unit L2 norm, float32 values)."""
    return _wire_floats(_pooled(ids, token_type_ids, dim, seed))


def classify_logits(
    ids: Sequence[int],
    token_type_ids: Sequence[int] | None = None,
    num_labels: int = DEFAULT_NUM_LABELS,
    dim: int = DEFAULT_EMBEDDING_DIM,
    seed: int = 0,
) -> list[float]:
    """The raw logits (no activation) a `--pooling classify --num-labels num_labels
    --embedding-dim dim --seed seed` sim returns for `ids`."""
    weights = _uniform_rows(seed, _CLASSIFIER_STREAM, np.arange(num_labels, dtype=np.uint64), dim)
    return _wire_floats(_LOGIT_SCALE * (weights @ _pooled(ids, token_type_ids, dim, seed)))


def check_input(
    ids: Sequence[int],
    token_type_ids: Sequence[int] | None,
    *,
    vocab_size: int,
    max_len: int,
) -> None:
    """Raise ValueError for an input a real encoder would refuse (its message is the status
    detail the client gets)."""
    if not ids:
        raise ValueError("the input is empty (tokenized.input_ids has no ids)")
    if len(ids) > max_len:
        raise ValueError(
            f"The input (length {len(ids)}) is longer than the model's maximum input length "
            f"of {max_len} tokens."
        )
    largest = max(ids)
    if largest >= vocab_size:
        raise ValueError(f"Token id {largest} is out of vocabulary (vocab size {vocab_size}).")
    if token_type_ids is not None:
        if len(token_type_ids) != len(ids):
            raise ValueError(
                f"token_type_ids has {len(token_type_ids)} entries for {len(ids)} input ids"
            )
        bad = [t for t in token_type_ids if not 0 <= t < TYPE_VOCAB_SIZE]
        if bad:
            raise ValueError(f"token type id {bad[0]} is out of range [0, {TYPE_VOCAB_SIZE})")


def _parse_labels(num_labels: int | None, id2label_json: str | None) -> tuple[str, ...]:
    if id2label_json is None:
        count = DEFAULT_NUM_LABELS if num_labels is None else num_labels
        return tuple(f"LABEL_{i}" for i in range(count))
    try:
        parsed = json.loads(id2label_json)
    except ValueError as exc:
        raise ValueError(f"--id2label is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict) or not parsed:
        raise ValueError('--id2label must be a non-empty JSON object like {"0": "LABEL_0"}')
    count = len(parsed)
    # Hugging Face's config.json keys classes by their index, as strings.
    if set(parsed) != {str(i) for i in range(count)}:
        raise ValueError(f"--id2label keys must be the class indices 0..{count - 1}")
    if not all(isinstance(label, str) for label in parsed.values()):
        raise ValueError("--id2label labels must be strings")
    if num_labels is not None and num_labels != count:
        raise ValueError(f"--num-labels {num_labels} disagrees with --id2label's {count} labels")
    return tuple(parsed[str(i)] for i in range(count))


@dataclass(frozen=True, slots=True)
class PoolingModel:
    """What a --pooling sim runs: the task, its sizes, and a classifier's labels."""

    task: Pooling
    dim: int = DEFAULT_EMBEDDING_DIM
    seed: int = 0
    # A classifier's labels by class index; empty for an embedding model.
    labels: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: SimOptions) -> PoolingModel | None:
        """The sim's pooling model (None: a generation model); ValueError for bad settings."""
        if options.pooling is None:
            if options.num_labels is not None or options.id2label is not None:
                raise ValueError("--num-labels and --id2label need --pooling classify")
            return None
        labels: tuple[str, ...] = ()
        if options.pooling == "classify":
            labels = _parse_labels(options.num_labels, options.id2label)
        elif options.num_labels is not None or options.id2label is not None:
            raise ValueError("--num-labels and --id2label need --pooling classify")
        return cls(options.pooling, options.embedding_dim, options.seed, labels)

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.task]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label_json(self) -> str:
        """SGLang's GetModelInfo id2label_json ("" for an embedding model)."""
        if not self.labels:
            return ""
        return json.dumps({str(i): label for i, label in enumerate(self.labels)})

    def pool(self, ids: Sequence[int], token_type_ids: Sequence[int] | None) -> list[float]:
        if self.task == "classify":
            return classify_logits(ids, token_type_ids, self.num_labels, self.dim, self.seed)
        return embed_values(ids, token_type_ids, self.dim, self.seed)
