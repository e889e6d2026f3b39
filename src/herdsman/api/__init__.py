"""The HTTP API: OpenAI-compatible endpoints on top of the request pipeline."""
