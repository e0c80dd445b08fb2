"""Start-up failures that say which part of the daemon could not start and, when there is one,
the file or address involved (``startup_failed`` names them; a bare ``PermissionError`` does
not)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class StartupError(RuntimeError):
    """The daemon could not start ``component`` (``backends``, ``store``, ``server``…);
    ``path`` is the file or address involved when known."""

    def __init__(self, component: str, detail: str, *, path: str = "") -> None:
        self.component = component
        self.detail = detail
        self.path = path
        where = f" ({path})" if path and path not in detail else ""
        super().__init__(f"{component}: {detail}{where}")


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, as one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def path_of(exc: BaseException) -> str:
    """The file an ``OSError`` is about (``""`` when it names none)."""
    if isinstance(exc, OSError):
        names = [str(n) for n in (exc.filename, exc.filename2) if n]
        return " → ".join(names)
    return ""


@asynccontextmanager
async def starting(component: str, *, path: str = "") -> AsyncIterator[None]:
    """Turn a failure inside the block into a :class:`StartupError` for ``component``."""
    try:
        yield
    except (StartupError, asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise StartupError(component, describe(exc), path=path_of(exc) or path) from exc


__all__ = ["StartupError", "describe", "path_of", "starting"]
