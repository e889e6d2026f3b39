"""What the simulated engine tells a gateway about its model, read from the model directory.

config.json and generation_config.json are optional: a directory holding only tokenizer files
still yields a usable card, with EOS/BOS/PAD looked up through tokenizer_config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from herdsman.sim.options import SimOptions

DEFAULT_MAX_CONTEXT = 32768
# tokenizer_config.json often carries a sentinel like 1e30 for "unbounded"; ignore such values.
_PLAUSIBLE_CONTEXT_LIMIT = 10_000_000
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True, slots=True)
class ModelCard:
    model_path: str
    served_model_name: str
    architectures: tuple[str, ...]
    model_type: str
    max_context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    pad_token_id: int | None
    dtype: str = "bfloat16"
    default_sampling_params: dict[str, Any] = field(default_factory=dict)

    @property
    def default_sampling_params_json(self) -> str:
        if not self.default_sampling_params:
            return ""
        return json.dumps(self.default_sampling_params, separators=(",", ":"))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _token_string(value: Any) -> str | None:
    # tokenizer_config.json spells special tokens either as a string or as an AddedToken dict.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _first_id(
    key: str, sources: list[dict[str, Any]], tok_config: dict[str, Any], tokenizer: Tokenizer
) -> list[int]:
    for source in sources:
        ids = _ids(source.get(f"{key}_token_id"))
        if ids:
            return ids
    text = _token_string(tok_config.get(f"{key}_token"))
    if text is not None:
        token_id = tokenizer.token_to_id(text)
        if token_id is not None:
            return [token_id]
    return []


def _max_context(override: int | None, config: dict[str, Any], tok_config: dict[str, Any]) -> int:
    if override:
        return override
    text_config = config.get("text_config")
    for source in (config, text_config if isinstance(text_config, dict) else {}):
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length"):
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    value = tok_config.get("model_max_length")
    if isinstance(value, int | float) and 0 < value < _PLAUSIBLE_CONTEXT_LIMIT:
        return int(value)
    return DEFAULT_MAX_CONTEXT


def load_model_card(
    model_dir: Path,
    tokenizer: Tokenizer,
    *,
    served_model_name: str | None = None,
    max_model_len: int | None = None,
) -> ModelCard:
    config = _read_json(model_dir / "config.json")
    gen_config = _read_json(model_dir / "generation_config.json")
    tok_config = _read_json(model_dir / "tokenizer_config.json")

    # generation_config.json wins for EOS, as in vLLM/SGLang: it lists every id that ends a turn.
    id_sources = [gen_config, config]
    eos = _first_id("eos", id_sources, tok_config, tokenizer)
    bos = _first_id("bos", id_sources, tok_config, tokenizer)
    pad = _first_id("pad", id_sources, tok_config, tokenizer)

    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    architectures = config.get("architectures")
    sampling = {k: gen_config[k] for k in _SAMPLING_KEYS if k in gen_config}
    resolved = model_dir.resolve()
    return ModelCard(
        model_path=str(resolved),
        served_model_name=served_model_name or resolved.name,
        architectures=tuple(a for a in architectures or () if isinstance(a, str)),
        model_type=str(config.get("model_type") or ""),
        max_context_length=_max_context(max_model_len, config, tok_config),
        vocab_size=vocab_size,
        eos_token_ids=tuple(dict.fromkeys(eos)),
        bos_token_id=bos[0] if bos else None,
        pad_token_id=pad[0] if pad else None,
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        default_sampling_params=sampling,
    )


def model_dtype(options: SimOptions, card: ModelCard) -> str:
    """The model dtype as vLLM reports it ("torch.bfloat16"): --model-dtype, or the config's."""
    return options.model_dtype or f"torch.{card.dtype}"
