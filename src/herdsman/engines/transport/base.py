"""The transport interface and its error."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

import grpc


class RpcError(Exception):
    """A call ended with a non-OK gRPC status (or could not be made at all)."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Transport(Protocol):
    name: str

    def __init__(self, target: str) -> None: ...

    async def unary(self, method: str, request: Any, response_type: Any, timeout: float) -> Any:
        """Call ``method`` (``/package.Service/Method``) and return the decoded response."""
        ...

    def stream(
        self, method: str, request: Any, response_type: Any, timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        """A server stream; closing the generator early cancels the call."""
        ...

    async def close(self) -> None: ...
