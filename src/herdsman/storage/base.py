"""What the Responses and Conversations APIs keep, and the one interface every backend serves.

Records are JSON-shaped dicts (the objects the API returns), so a backend stores them as
documents keyed by id and never needs to understand them. Every method is safe to call from
every gateway process (and every gateway replica sharing the backend) at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Json = dict[str, Any]
Order = Literal["asc", "desc"]


class StorageError(Exception):
    """The backend failed (unreachable, refused, corrupt): the API answers 503."""


@dataclass(slots=True)
class ResponseRecord:
    """One stored response.

    ``response`` is the Response object exactly as ``GET /v1/responses/{id}`` returns it;
    ``input_items`` are this request's input items (each with an ``id``), as
    ``GET /v1/responses/{id}/input_items`` lists them; ``context`` is what a later request with
    ``previous_response_id`` continues from: the items of the whole exchange so far (earlier
    turns, this input, this output), so a chain is one read, not a walk.
    """

    id: str
    created_at: int
    response: Json
    input_items: list[Json] = field(default_factory=list)
    context: list[Json] = field(default_factory=list)


@dataclass(slots=True)
class Page:
    data: list[Json]
    has_more: bool


class Store(Protocol):
    """A backend. Writes of one record are atomic; the last write of a record wins."""

    # --- responses ---
    async def put_response(self, record: ResponseRecord) -> None:
        """Insert or replace (a background response is written as it progresses)."""

    async def get_response(self, response_id: str) -> ResponseRecord | None: ...

    async def delete_response(self, response_id: str) -> bool:
        """False when there was none. Its events and cancel flag go with it."""

    async def request_cancel(self, response_id: str) -> None:
        """Flag a background response for cancelling; the process running it polls the flag
        (``cancel_requested``), wherever the cancel call arrived."""

    async def cancel_requested(self, response_id: str) -> bool: ...

    async def append_events(self, response_id: str, events: list[tuple[int, bytes]]) -> None:
        """Append streamed events ``(sequence_number, SSE frame)`` of a background response,
        for ``GET /v1/responses/{id}?stream=true&starting_after=N`` to replay. An event whose
        sequence number is already stored replaces it."""

    async def events_after(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        """The events with a sequence number above ``after``, in order."""

    # --- conversations ---
    async def put_conversation(self, conversation: Json) -> None:
        """Insert or replace ``{"id", "object": "conversation", "created_at", "metadata"}``
        (its items stay)."""

    async def get_conversation(self, conversation_id: str) -> Json | None: ...

    async def delete_conversation(self, conversation_id: str) -> bool:
        """False when there was none; its items go with it."""

    async def add_items(self, conversation_id: str, items: list[Json]) -> None:
        """Append items (each has a unique ``id``) after the conversation's existing ones, all
        at once. An item whose ``id`` the conversation already has replaces that item where it
        stands (the last write wins). Nothing is stored when the conversation does not exist
        (deleted meanwhile), so a delete racing an append leaves no orphans."""

    async def list_items(
        self, conversation_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        """Items in insertion order (``asc``) or newest first (``desc``), at most ``limit``
        (at least 1), starting after the item ``after`` in that order (``None``: from the
        start). ``has_more`` when items follow the page. An ``after`` that is not an item of the
        conversation, or a conversation that does not exist, gives an empty page."""

    async def get_item(self, conversation_id: str, item_id: str) -> Json | None: ...

    async def delete_item(self, conversation_id: str, item_id: str) -> bool: ...

    async def close(self) -> None:
        """Release connections and threads. The store stays usable: the next call reopens."""
