"""Errors shared by the backend factories."""

from __future__ import annotations


class UnknownProviderError(NotImplementedError):
    """The configured provider does not exist (or is not built into this version)."""

    def __init__(self, layer: str, provider: str, available: tuple[str, ...]) -> None:
        self.layer = layer
        self.provider = provider
        super().__init__(f"{layer} provider {provider!r} is not available in this build "
                         f"(available: {', '.join(available)})")


class BackendError(RuntimeError):
    """A provider failed: an HTTP/WebSocket error answer, a broken stream, a timeout.

    ``status`` is the HTTP status (or WebSocket close code) when there was one; ``message``
    the provider's own reason (its error body), never the API key. ``retryable`` marks
    failures another attempt might not meet (429, 5xx, timeouts, dropped connections).
    """

    def __init__(self, layer: str, provider: str, message: str, *, status: int | None = None,
                 retryable: bool = True) -> None:
        self.layer, self.provider, self.status = layer, provider, status
        self.message, self.retryable = message, retryable
        where = f" ({status})" if status is not None else ""
        super().__init__(f"{layer} provider {provider!r} failed{where}: {message}")


__all__ = ["BackendError", "UnknownProviderError"]
