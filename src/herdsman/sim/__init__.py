"""engine-sim: a simulated LLM inference engine speaking the real vLLM / SGLang gRPC protocols.

It exists so the gateway can be tested and benchmarked without a GPU: it streams token ids that
decode to real text of the model's vocabulary, honours the sampling fields a gateway relies on
(max/min tokens, stop ids, EOS, n, logprobs), models TTFT/ITL and a prefix cache, and can inject
faults on demand. With --role prefill / decode, two sims serve disaggregated (PD) requests: the
decode fetches each request's KV from the prefill over TCP (disagg.py). With --pooling it is an
embedding model or a classifier instead, served through Embed (pooling.py, embed_handler.py).
"""
