"""Storage backends, chosen by URL: `sqlite:///path/to/dir` (the embedded default)."""

from __future__ import annotations

from collections.abc import Sequence

from foryou.errors import ForYouError
from foryou.store.base import Store
from foryou.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "open_store"]


def open_store(url: str, regions: Sequence[str], secret: bytes = b"") -> Store:
    """Open the store a URL names; a bare path means SQLite in that directory. `secret` (the privacy
    secret) keys the hashes of idempotency keys."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):] or ".", regions, secret)
    if "://" not in url:
        return SQLiteStore(url, regions, secret)
    scheme = url.split("://", 1)[0]
    raise ForYouError(f"unsupported store URL scheme {scheme!r}: use sqlite:///DIR", field="store")
