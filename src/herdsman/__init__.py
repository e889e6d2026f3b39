"""herdsman: a Python gateway for LLM serving over gRPC engines."""

__version__ = "0.1.0"
