"""Persistent call records (``store.url``, docs/configuration.md): SQLite or PostgreSQL, same
schema.

``await open_store(url)`` opens the database named by ``store.url`` and runs the missing
schema migrations:

- ``sqlite:///./patterd.db`` (the default; relative to the working directory),
  ``sqlite:////var/lib/patterd/calls.db`` (absolute), ``sqlite:///:memory:``;
- ``postgresql://user:pass@host:5432/db`` (or ``postgres://``), for replicas sharing one
  history; query parameters are passed to ``asyncpg`` (``sslmode``, server settings, …).

The call path never awaits the database: it hands snapshots to a ``StoreWriter`` whose
``submit`` never blocks. ``retention_loop`` (``store.retention_days``) sweeps old calls
periodically.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from .base import Store, StoreDataError, StoreError, StoreUnavailable
from .migrations import LATEST as SCHEMA_VERSION
from .records import decode_cursor, encode_cursor
from .retention import retention_loop, run_retention
from .writer import StoreWriter

DEFAULT_URL = "sqlite:///./patterd.db"

__all__ = [
    "DEFAULT_URL", "SCHEMA_VERSION", "Store", "StoreDataError", "StoreError",
    "StoreUnavailable", "StoreWriter", "decode_cursor", "encode_cursor", "open_store",
    "retention_loop", "run_retention", "sqlite_path",
]


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:///…`` URL names (``:memory:`` stays as it is).

    ``sqlite:///relative/file.db`` is relative to the working directory,
    ``sqlite:////absolute/file.db`` is absolute; percent-escapes are decoded.
    """
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise StoreError(f"store.url: expected sqlite:///PATH (three slashes, then the path; "
                         f"four for an absolute one), got {url!r}")
    rest = url[len(prefix):]
    if "?" in rest or "#" in rest:
        raise StoreError("store.url: sqlite URLs take no query string or fragment")
    path = unquote(rest)
    if not path:
        raise StoreError("store.url: sqlite:/// needs a file path, e.g. sqlite:///./patterd.db")
    if path == ":memory:":
        return path
    try:
        folder = Path(path).is_dir()
    except OSError:
        folder = False   # unreadable: opening it will say so
    if folder:
        raise StoreError(f"store.url: {path} is a folder, not a database file")
    return path


async def open_store(url: str = DEFAULT_URL) -> Store:
    """Open the store ``url`` names, creating and migrating the schema as needed.

    Raises ``StoreError`` (message starting with ``store.url:``) for a URL it cannot use or a
    database it cannot open, write or migrate; ``StoreUnavailable`` (a subclass) when the
    cause may pass (server unreachable, file locked).
    """
    scheme = url.partition(":")[0].lower() if isinstance(url, str) else ""
    if scheme == "sqlite":
        from .sqlite import SqliteStore
        return await SqliteStore.open(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore
        return await PostgresStore.open(url)
    raise StoreError("store.url: expected sqlite:///PATH or postgresql://user:pass@host:port/db"
                     f", got a URL with scheme {scheme or '(none)'!r}")
