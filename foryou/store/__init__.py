"""Storage backends, chosen by URL: `sqlite:///path/to/dir` (the embedded default) and `memory://name`
(in this process's memory: tests and experiments)."""

from __future__ import annotations

from collections.abc import Sequence

from foryou.errors import ForYouError
from foryou.store.base import Store
from foryou.store.memory import MemoryStore
from foryou.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store", "open_store"]


def open_store(url: str, regions: Sequence[str], secret: bytes = b"", second: bool = False) -> Store:
    """Open the store a URL names; a bare path means SQLite in that directory. `secret` (the privacy
    secret) keys the hashes of idempotency keys. `second`: another handle of a process that has one
    open already (SQLite: without a WAL-folding thread of its own; the first one's folds for both)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):] or ".", regions, secret, fold=not second)
    if url.startswith("memory://"):
        return MemoryStore(url[len("memory://"):], regions, secret)
    if "://" not in url:
        return SQLiteStore(url, regions, secret, fold=not second)
    scheme = url.split("://", 1)[0]
    raise ForYouError(f"unsupported store URL scheme {scheme!r}: use sqlite:///DIR or memory://NAME", field="store")
