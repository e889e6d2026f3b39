"""What can go wrong with a request, in the pipeline's own terms.

The pipeline says what kind of failure it is; the API layer (``herdsman.api.errors``) decides the
HTTP status and body. So the Responses and Messages adapters map the same failures their own way.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request the pipeline cannot serve. ``param`` names the offending request field."""

    def __init__(self, message: str, param: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(RequestError):
    """The client's input is wrong (or asks for more than this gateway allows)."""


class ModelNotFound(RequestError):
    """The request names a model this gateway does not serve."""


class Overloaded(RequestError):
    """Refused for lack of capacity, not for anything wrong with the request: try again later."""

    def __init__(self, message: str, *, retry_after: float, code: str = "overloaded") -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NoWorkerAvailable(RequestError):
    """No engine worker can take the request (all unhealthy, or their circuits open)."""


class EngineFailed(RequestError):
    """The engine failed the request after it was sent."""


class EngineTimeout(RequestError):
    """The engine did not finish the request within the request timeout."""
