"""Logprob token strings as vLLM's own code makes them, for the logprob-text differential.

Run with the vLLM venv's python: reads ``{"tokenizers": {name: dir}, "cases": [{"tokenizer":
name, "ids": [...], "alternatives": [...]}]}`` on stdin and prints, per case, the strings vLLM
reports for each position: ``{"sampled": [str, ...], "alternatives": [str, ...]}``.

Each position goes through what ``LogprobsProcessor._update_sample_logprobs`` does: the token
decoded alone (``convert_ids_list_to_tokens``: decode plus the Metaspace leading-space
restoration), then, when that ends in U+FFFD, ``LogprobsProcessor._correct_decoded_token`` with
the up to four ids sampled before it. ``alternatives[i]`` is a top-k id at position ``i``: the
same context corrects it.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from vllm.tokenizers import get_tokenizer
from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens
from vllm.v1.engine.logprobs import LogprobsProcessor


def main() -> None:
    request = json.load(sys.stdin)
    tokenizers = {name: get_tokenizer(path) for name, path in request["tokenizers"].items()}
    out = []
    for case in request["cases"]:
        tokenizer = tokenizers[case["tokenizer"]]
        processor = SimpleNamespace(tokenizer=tokenizer)
        ids, alternatives = case["ids"], case["alternatives"]
        sampled, alts = [], []
        for i, (token_id, alternative) in enumerate(zip(ids, alternatives, strict=True)):
            context = ids[max(0, i - 4) : i]
            pair = [token_id, alternative]
            decoded = convert_ids_list_to_tokens(tokenizer, pair)
            fixed = [
                LogprobsProcessor._correct_decoded_token(processor, tid, context)
                if text.endswith("\ufffd")
                else text
                for tid, text in zip(pair, decoded, strict=True)
            ]
            sampled.append(fixed[0])
            alts.append(fixed[1])
        out.append({"sampled": sampled, "alternatives": alts})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
