"""The request pipeline between the HTTP API and the engines.

prepare (template, tokenize, sampling) -> route (pick a worker) -> generate (engine stream)
-> postprocess per choice (detokenize, stop strings). Each stage is its own module.
"""
