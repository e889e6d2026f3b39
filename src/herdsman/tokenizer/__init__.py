"""Text <-> token ids: chat templates, tokenization, incremental detokenization, stop strings."""

from herdsman.tokenizer.chat_template import ChatTemplate, ChatTemplateError
from herdsman.tokenizer.detokenizer import IncrementalDetokenizer
from herdsman.tokenizer.loader import load_model_tokenizer
from herdsman.tokenizer.stop import StopChecker
from herdsman.tokenizer.tokenizer import ModelTokenizer

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "ModelTokenizer",
    "StopChecker",
    "load_model_tokenizer",
]
