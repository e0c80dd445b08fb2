"""Errors shared by the backend factories."""

from __future__ import annotations


class UnknownProviderError(NotImplementedError):
    """The configured provider does not exist (or is not built into this version)."""

    def __init__(self, layer: str, provider: str, available: tuple[str, ...]) -> None:
        self.layer = layer
        self.provider = provider
        super().__init__(f"{layer} provider {provider!r} is not available in this build "
                         f"(available: {', '.join(available)})")


__all__ = ["UnknownProviderError"]
