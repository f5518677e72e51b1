"""Who may change users' events at once: batches of events share the right, an erasure takes it alone.

Why: a large batch yields between chunks so that feeds get in, and a batch used to hold one lock from
its checks to its last chunk, so batches from several clients queued one behind another, each waiting
a turn of the event loop (every feed queued meanwhile) per chunk: with feeds at 16 connections at 1M
items, 4 posting connections got about 6,000 of the 10,000 events/s they offered. Batches interleave
safely (each chunk is one atomic, idempotent append); an erasure must not, since the later chunks of a
batch begun before it would bring the user back. An erasure that waits goes before batches that come
after it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class UsersChanging:
    def __init__(self) -> None:
        self._turn = asyncio.Condition()
        self._batches = 0  # in progress
        self._erasing = False
        self._waiting = 0  # erasures waiting

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        async with self._turn:
            await self._turn.wait_for(lambda: not self._erasing and not self._waiting)
            self._batches += 1
        try:
            yield
        finally:
            async with self._turn:
                self._batches -= 1
                self._turn.notify_all()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        async with self._turn:
            self._waiting += 1
            try:
                await self._turn.wait_for(lambda: not self._erasing and not self._batches)
            finally:
                self._waiting -= 1
            self._erasing = True
        try:
            yield
        finally:
            async with self._turn:
                self._erasing = False
                self._turn.notify_all()
