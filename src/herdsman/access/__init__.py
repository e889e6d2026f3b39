"""Who may call the gateway and how much: API keys, per-key rate limits, CORS.

Applied as a wrapper around the HTTP app (``herdsman.access.gate.protect``). This package's
``__init__`` imports nothing, so the pipeline can import ``herdsman.access.usage`` (its token
hook) without an import cycle.
"""
