"""Writes tiny random-weight BERT pooling models with a WordPiece tokenizer, for the vLLM tier.

Run with the vLLM venv's python (it has torch, transformers and tokenizers), not herdsman's:

    python make_tiny_pooling.py OUT_DIR [KIND ...]

KIND is one or more of ``embed``, ``rerank``, ``classify`` (default: all three); each is written
to ``OUT_DIR/KIND``:

- ``embed``: ``BertModel`` (vLLM: ``BertEmbeddingModel``, the ``embed`` task) with a
  sentence-transformers ``modules.json`` (Transformer -> mean Pooling -> Normalize) that vLLM
  reads for its pooler: mean pooling over the tokens, L2-normalised. Without it vLLM would pool
  the CLS token (``BertModel``'s default).
- ``rerank``: a cross-encoder, ``BertForSequenceClassification`` with ``num_labels=1`` (vLLM's
  ``classify`` task; its ``/score`` and ``/rerank`` take a sigmoid of the one logit). The pair
  is encoded ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` 0 then 1.
- ``classify``: ``BertForSequenceClassification`` with 3 labels (``id2label`` negative, neutral,
  positive) for ``/classify`` (softmax over the labels).

Deterministic and offline: fixed seed, fixed shapes, a vocabulary built here from a fixed word
list (no trainer, no download). 2 layers, hidden 64, 2 heads of head_dim 32 (vLLM's CPU
attention takes head_dim >= 32), intermediate 128, 512 positions, 2 token types, float32,
safetensors. The tokenizer is BERT's uncased WordPiece pipeline (BertNormalizer with lowercase,
BertPreTokenizer, ``[CLS] $A [SEP]`` / ``[CLS] $A [SEP] $B:1 [SEP]:1``), saved as
``tokenizer.json`` with a ``tokenizer_config.json`` for ``BertTokenizerFast`` (and a plain
``vocab.txt``); transformers' ``AutoTokenizer`` and vLLM load it as it is.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, BertModel

SEED = 4321
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_POSITIONS = 512
KINDS = ("embed", "rerank", "classify")
LABELS = {0: "negative", 1: "neutral", 2: "positive"}

# Whole words of the vocabulary (besides single characters and their ## forms): everyday
# English and the words the tests use, so most test text is one token a word.
WORDS = """
the of and to in is was for on that with as it by at from his her he she they we you i this
be are or an not but have has had were which their all one two three four five six seven eight
nine ten there been if more when will would who so no what about up out can into than them
some could its time only new other these my may do did then first any like now over such our
man men woman women people year years day days way many world how well also back after use
used where most much before through good great little long old own same right small large big
high low very make made just down each those should because even here between under never
life still last house home city country state water food light sun moon star sky earth fire
air tree trees river sea ocean mountain road car train ship plane book books paper word words
name number part place point hand head eye eyes face heart mind body child children family
friend friends school work job money market company business price cost value question answer
problem reason idea fact story history music art science data model models system systems
computer network server client request response query document documents text search rank
ranking score result results list item items embedding embeddings vector vectors similar
similarity classify class label positive negative neutral happy sad angry love hate best worst
quick brown fox jumps lazy dog cat cats dogs bird fish horse animal animals capital paris
france berlin germany london england rome italy madrid spain tokyo japan weather today rain
snow cold hot warm summer winter spring autumn morning evening night hello world goodbye thanks
please yes okay fine bad nice beautiful ugly fast slow easy hard open close start stop begin
end red blue green yellow black white color language english french german learning machine
deep neural attention transformer engine gateway test tests testing example examples sentence
sentences phrase meaning
"""


def vocabulary() -> list[str]:
    """Specials, every printable ASCII character and its ``##`` continuation, then the words:
    any lowercased ASCII text tokenizes without ``[UNK]``."""
    chars = [c for c in string.digits + string.ascii_lowercase + string.punctuation]
    seen: set[str] = set()
    vocab: list[str] = []
    for token in [*SPECIALS, *chars, *(f"##{c}" for c in chars), *WORDS.split()]:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return vocab


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def write_tokenizer(out: Path, vocab: list[str]) -> None:
    build_tokenizer(vocab).save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    config = {
        "tokenizer_class": "BertTokenizerFast",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": True,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "padding_side": "right",
        "truncation_side": "right",
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "added_tokens_decoder": {
            str(i): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, token in enumerate(SPECIALS)
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def bert_config(vocab_size: int, **extra: object) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_act="gelu",
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        initializer_range=0.5,  # wide enough that scores and labels differ by text
        pad_token_id=0,
        torch_dtype="float32",
        **extra,
    )


def write_sentence_transformers(out: Path) -> None:
    """modules.json (Transformer, mean Pooling, Normalize): vLLM's pooler config for ``embed``."""
    st = "sentence_transformers.models"
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{st}.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{st}.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{st}.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    pooling = {
        "word_embedding_dimension": 64,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_POSITIONS, "do_lower_case": False}, indent=2) + "\n"
    )


def make(kind: str, out: Path) -> None:
    vocab = vocabulary()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    if kind == "embed":
        config = bert_config(len(vocab), architectures=["BertModel"])
        model = BertModel(config, add_pooling_layer=False)
    elif kind == "rerank":
        config = bert_config(
            len(vocab),
            architectures=["BertForSequenceClassification"],
            num_labels=1,
            id2label={0: "LABEL_0"},
            label2id={"LABEL_0": 0},
        )
        model = BertForSequenceClassification(config)
    elif kind == "classify":
        config = bert_config(
            len(vocab),
            architectures=["BertForSequenceClassification"],
            num_labels=len(LABELS),
            id2label=LABELS,
            label2id={label: i for i, label in LABELS.items()},
        )
        model = BertForSequenceClassification(config)
    else:
        raise SystemExit(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    model = model.to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out, vocab)
    if kind == "embed":
        write_sentence_transformers(out)


def main(out: Path, kinds: list[str]) -> None:
    for kind in kinds or KINDS:
        make(kind, out / kind)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
