"""The one error type every image refusal raises, so the API can map it to a 400."""

from __future__ import annotations


class MediaError(ValueError):
    """An image input was refused or could not be used.

    `param` names the request field at fault (the API puts it in the OpenAI error's `param`);
    `code` is a short machine-readable reason, stable across releases.
    """

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
