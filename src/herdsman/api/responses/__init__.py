"""OpenAI's Responses API over the chat pipeline (``service``), its stored side (``stored``)."""

from herdsman.api.responses.service import create_response
from herdsman.api.responses.stored import (
    cancel_response,
    delete_response,
    get_response,
    list_input_items,
)

__all__ = [
    "cancel_response",
    "create_response",
    "delete_response",
    "get_response",
    "list_input_items",
]
