"""Load a model's tokenizer, chat template and EOS ids from a Hugging Face style directory."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from tokenizers import Tokenizer, processors

from herdsman.tokenizer.chat_template import ChatTemplate
from herdsman.tokenizer.fast_backend import (
    EncodeProbes,
    decodes_alike,
    encode_probes,
    open_fast_tokenizer,
    verified_encoder,
    warm,
)
from herdsman.tokenizer.tokenizer import ModelTokenizer

log = logging.getLogger(__name__)

# What transformers hands a template as special_tokens_map.
_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class TokenizerLoadError(RuntimeError):
    pass


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens either as strings or as AddedToken dicts.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _template_source(directory: Path, config: dict[str, Any], override: str | None) -> str | None:
    if override:
        path = Path(override)
        return path.read_text(encoding="utf-8") if path.is_file() else override
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template: Any = _read_json(directory / "chat_template.json").get("chat_template")
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):
        # Named templates: transformers uses the one called "default" for plain chat.
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


# generation_config.json keys vLLM's server takes as the model's sampling defaults.
_SAMPLING_KEYS = (
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "max_new_tokens",
)


def sampling_defaults(directory: Path) -> dict[str, Any]:
    """The model's own sampling defaults (generation_config.json), for requests that leave them
    unset, as vLLM's server applies them (``--generation-config auto``); ``max_new_tokens`` is
    the default ``max_tokens``."""
    config = _read_json(directory / "generation_config.json")
    found = {k: config[k] for k in _SAMPLING_KEYS if isinstance(config.get(k), (int, float))}
    found = {k: v for k, v in found.items() if not isinstance(v, bool)}
    if "max_new_tokens" in found:
        found["max_tokens"] = int(found.pop("max_new_tokens"))
    return found


def _eos_ids(directory: Path, tokenizer: Tokenizer, eos_token: str | None) -> tuple[int, ...]:
    ids: list[int] = []
    generation = _read_json(directory / "generation_config.json").get("eos_token_id")
    if isinstance(generation, int):
        ids.append(generation)
    elif isinstance(generation, list):
        ids.extend(i for i in generation if isinstance(i, int))
    if eos_token is not None:
        token_id = tokenizer.token_to_id(eos_token)
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return tuple(ids)


def special_tokens_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The special tokens a template sees, from tokenizer_config.json, as transformers does."""
    # Only the tokens that are set: a template must see an unset one as undefined, not None.
    special: dict[str, Any] = {}
    for key in _SPECIAL_TOKEN_KEYS:
        text = _token_text(config.get(key))
        if text is not None:
            special[key] = text
    extra = config.get("additional_special_tokens")
    if isinstance(extra, list) and extra:
        special["additional_special_tokens"] = [_token_text(t) for t in extra]
    return special


# transformers classes that rebuild the post-processor from add_bos_token/add_eos_token when
# loaded (`update_post_processor`), whatever tokenizer.json says; with their defaults.
_REBUILDS_POST_PROCESSOR = {
    "LlamaTokenizer": (True, False),
    "LlamaTokenizerFast": (True, False),
    "CodeLlamaTokenizer": (True, False),
    "CodeLlamaTokenizerFast": (True, False),
    "GemmaTokenizer": (True, False),
    "GemmaTokenizerFast": (True, False),
}


def _apply_bos_eos_config(tokenizer: Tokenizer, config: dict[str, Any]) -> bool:
    """Do what transformers does for these classes: BOS/EOS as tokenizer_config.json says.

    DeepSeek-V3's tokenizer.json adds no BOS, but its config (LlamaTokenizerFast,
    add_bos_token: true) makes transformers add one. Returns whether the tokenizer changed.
    """
    defaults = _REBUILDS_POST_PROCESSOR.get(str(config.get("tokenizer_class")))
    if defaults is None:
        return False
    add_bos = bool(config.get("add_bos_token", defaults[0]))
    add_eos = bool(config.get("add_eos_token", defaults[1]))
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    bos_id = tokenizer.token_to_id(bos) if bos is not None else None
    eos_id = tokenizer.token_to_id(eos) if eos is not None else None
    if (add_bos and bos_id is None) or (add_eos and eos_id is None):
        return False  # transformers raises here; keep the file's own behaviour
    single = f"{bos}:0 " if add_bos else ""
    single += "$A:0" + (f" {eos}:0" if add_eos else "")
    pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
    special = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if add_eos else [])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special
    )
    return True


def load_model_tokenizer(
    directory: str | Path, chat_template: str | None = None, *, fast: bool = True
) -> ModelTokenizer:
    """Load from a local directory holding tokenizer.json (and usually tokenizer_config.json).

    A tokenizer preloaded by this process (or the process it was forked from) is taken instead
    of read again; its fast encoder is checked here, in the process that will use it."""
    model, pending, _ = open_model_tokenizer(directory, chat_template, fast=fast)
    check_fast_encoder(model, pending)
    return model


def open_model_tokenizer(
    directory: str | Path, chat_template: str | None = None, *, fast: bool = True
) -> tuple[ModelTokenizer, Any, bool]:
    """``load_model_tokenizer`` without the fast encoder's check: the model, its fastokens
    tokenizer still to check (or None), and whether that one is warm (see fast_backend.warm),
    which makes the check a few milliseconds."""
    preloaded = _PRELOADED.pop(_key(directory, chat_template), None) if fast else None
    if preloaded is not None and preloaded.identity == _identity(Path(directory)):
        return preloaded.model, preloaded.fast, preloaded.warmed
    # Not preloaded, or its files changed (or went) since.
    model, pending = _load(Path(directory), chat_template, fast)
    return model, pending, False


class FastCandidate(NamedTuple):
    """A fastokens tokenizer still to check as an encoder, and what it is checked against."""

    tokenizer: Any
    probes: EncodeProbes


def check_fast_encoder(model: ModelTokenizer, pending: FastCandidate | None) -> None:
    """Encode with ``pending`` (fastokens) from now on if it gives the reference's ids."""
    if pending is None or model.tokenizer_file is None:
        return
    model.fast_encode = verified_encoder(pending.tokenizer, pending.probes, model.tokenizer_file)
    if model.fast_encode is None:
        model.hold_reference()  # the reference encodes: read it again now, not on a request


def preload_model_tokenizers(directories: list[str], chat_template: str | None = None) -> None:
    """Load tokenizers ahead, to be taken by ``load_model_tokenizer`` in this process or in the
    processes forked from it (which share their memory copy-on-write). fastokens is warmed where
    that starts no thread (fast_backend.warm); nothing else encodes here."""
    for directory in directories:
        key = _key(directory, chat_template)
        if key not in _PRELOADED:
            identity = _identity(Path(directory))
            model, fast = _load(Path(directory), chat_template, True)
            warmed = fast is not None and warm(fast.tokenizer)
            _PRELOADED[key] = _Preloaded(model, fast, warmed, identity)


class _Preloaded(NamedTuple):
    """A tokenizer loaded ahead of need."""

    model: ModelTokenizer
    fast: FastCandidate | None  # its fastokens tokenizer, not yet checked as an encoder
    warmed: bool  # see fast_backend.warm
    identity: tuple[Any, ...]  # of the files it was read from


_PRELOADED: dict[tuple[str, str | None], _Preloaded] = {}


def _identity(directory: Path) -> tuple[Any, ...]:
    """What changes when the files a tokenizer is read from change (or go)."""
    out: list[Any] = []
    for name in _SOURCE_FILES:
        try:
            stat = (directory / name).stat()
            out.append((name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


_SOURCE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def _key(directory: str | Path, chat_template: str | None) -> tuple[str, str | None]:
    return str(Path(directory).resolve()), chat_template


def _load(
    directory: Path, chat_template: str | None, fast: bool
) -> tuple[ModelTokenizer, FastCandidate | None]:
    """The model with its reference tokenizer, and fastokens' still to check as an encoder.
    Where fastokens decodes alike, it decodes already and the reference is let go."""
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerLoadError(f"no tokenizer.json in {directory}")
    config = _read_json(directory / "tokenizer_config.json")
    read_reference = _reference_reader(tokenizer_file, config)
    tokenizer, rebuilt = read_reference()
    special = special_tokens_from_config(config)
    source = _template_source(directory, config, chat_template)
    max_length = config.get("model_max_length")
    model = ModelTokenizer(
        reference=tokenizer,
        chat_template=ChatTemplate(source, special) if source else None,
        eos_token_ids=_eos_ids(directory, tokenizer, special.get("eos_token")),
        special_tokens=special,
        model_max_length=max_length if isinstance(max_length, int) and max_length < 2**40 else None,
        source=str(directory),
        tokenizer_file=tokenizer_file,
        sampling_defaults=sampling_defaults(directory),
        truncation_side="left" if config.get("truncation_side") == "left" else "right",
        reload=lambda: read_reference()[0],
    )
    if not fast:
        return model, None
    candidate = open_fast_tokenizer(tokenizer_file, tokenizer.to_str() if rebuilt else None)
    if candidate is None:
        return model, None
    probes = encode_probes(tokenizer)
    if decodes_alike(candidate, tokenizer, probes, tokenizer_file):
        model.decode_with(candidate)
    return model, FastCandidate(candidate, probes)


def _reference_reader(
    tokenizer_file: Path, config: dict[str, Any]
) -> Callable[[], tuple[Tokenizer, bool]]:
    """Reads the reference tokenizer as the model uses it: (it, whether the config rebuilt its
    post-processor)."""

    def read() -> tuple[Tokenizer, bool]:
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises plain Exception on malformed files
            raise TokenizerLoadError(f"cannot load {tokenizer_file}: {exc}") from exc
        return tokenizer, _apply_bos_eos_config(tokenizer, config)

    return read
