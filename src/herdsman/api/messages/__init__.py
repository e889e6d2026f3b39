"""Anthropic's Messages API over the chat pipeline: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``."""

from herdsman.api.messages.service import count_tokens, create_message

__all__ = ["count_tokens", "create_message"]
