"""Response building shared by the vLLM and SGLang protocols.

Both protos define GenerateResponse / GenerateStreamChunk / GenerateComplete / OutputLogProbs (and
EmbedResponse) with the same field names, so one builder serves both; subclasses only parse
requests and decide the protocol-specific details (request_id on the response, what
`matched_token_id` means, the longest input Embed takes).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tokenizers import Tokenizer

from herdsman.sim.logprobs import fill_input_logprobs, fill_output_logprobs
from herdsman.sim.model_card import ModelCard
from herdsman.sim.sim_request import EmbedParams, GenerationParams, SimRequest, SimSequence


class ProtoWire:
    backend: str = ""
    server_type: str = ""
    # SGLang's GenerateResponse carries the request id; vLLM's does not.
    response_has_request_id: bool = False
    # SGLang reports the EOS id as the matched token; vLLM only reports explicit stop ids.
    eos_is_matched_token: bool = False
    # Prompt logprobs with the request's first chunk only, not each choice's first chunk: vLLM
    # does this when the servicer lags and AsyncLLM coalesces the outputs of several choices
    # (RequestOutput.add merges completions and keeps the first output's prompt_logprobs).
    prompt_logprobs_once: bool = False

    def __init__(self, pb: ModuleType, card: ModelCard, tokenizer: Tokenizer) -> None:
        self.pb = pb
        self.card = card
        self.tokenizer = tokenizer
        self._response = pb.GenerateResponse
        self._chunk = pb.GenerateStreamChunk
        self._complete = pb.GenerateComplete

    def parse_generate(self, request: Any) -> GenerationParams:
        raise NotImplementedError

    def parse_embed(self, request: Any) -> EmbedParams:
        raise NotImplementedError

    @property
    def max_embed_len(self) -> int:
        """The longest input Embed takes (vLLM: the whole context)."""
        return self.card.max_context_length

    def embed_response(self, values: list[float], prompt_tokens: int) -> Any:
        return self.pb.EmbedResponse(
            embedding=values, prompt_tokens=prompt_tokens, embedding_dim=len(values)
        )

    def _wrap(self, request: SimRequest, **part: Any) -> Any:
        if self.response_has_request_id:
            return self._response(request_id=request.params.request_id, **part)
        return self._response(**part)

    def _fill_logprobs(
        self, message: Any, request: SimRequest, seq: SimSequence, start: int, end: int
    ) -> None:
        top_n = request.params.logprobs
        assert top_n is not None
        fill_output_logprobs(
            message,
            key=request.logprob_key * 131 + seq.index,
            first_position=start,
            token_ids=seq.output[start:end],
            top_n=top_n,
            vocab_size=self.card.vocab_size,
        )

    def _fill_prompt_logprobs(self, message: Any, request: SimRequest) -> None:
        top_n = request.params.prompt_logprobs
        assert top_n is not None
        fill_input_logprobs(
            message,
            key=request.logprob_key,
            prompt_ids=request.params.prompt_ids,
            top_n=top_n,
            vocab_size=self.card.vocab_size,
        )

    def chunk(self, request: SimRequest, seq: SimSequence, start: int, end: int) -> Any:
        """A stream chunk carrying output[start:end]; completion_tokens is cumulative."""
        chunk = self._chunk(
            token_ids=seq.output[start:end],
            prompt_tokens=request.prompt_len,
            completion_tokens=end,
            cached_tokens=request.cached_tokens,
            index=seq.index,
        )
        if request.params.logprobs is not None:
            self._fill_logprobs(chunk.output_logprobs, request, seq, start, end)
        if request.params.prompt_logprobs is not None and start == 0:
            # Real servicers send the prompt's logprobs with each choice's first chunk only.
            if not (self.prompt_logprobs_once and request.prompt_logprobs_sent):
                self._fill_prompt_logprobs(chunk.input_logprobs, request)
            request.prompt_logprobs_sent = True
        return self._wrap(request, chunk=chunk)

    def complete(self, request: SimRequest, seq: SimSequence) -> Any:
        """The final message of one sequence, carrying every output id."""
        output = seq.output
        complete = self._complete(
            output_ids=output,
            finish_reason=seq.finish_reason or "stop",
            prompt_tokens=request.prompt_len,
            completion_tokens=len(output),
            cached_tokens=request.cached_tokens,
            index=seq.index,
        )
        if seq.matched_token_id is not None and (
            self.eos_is_matched_token or not seq.stopped_by_eos
        ):
            complete.matched_token_id = seq.matched_token_id
        if request.params.logprobs is not None and output:
            self._fill_logprobs(complete.output_logprobs, request, seq, 0, len(output))
        if request.params.prompt_logprobs is not None:
            self._fill_prompt_logprobs(complete.input_logprobs, request)
        return self._wrap(request, complete=complete)
