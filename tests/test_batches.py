"""Batches of events interleave their chunks; an erasure waits for the batches in progress, and batches
that come while it waits go after it (`foryou/http/batches.py`)."""

from __future__ import annotations

import asyncio

from foryou.http.batches import UsersChanging


def test_batches_interleave_and_an_erasure_goes_alone() -> None:
    order: list[str] = []

    async def batch(lock: UsersChanging, name: str, chunks: int) -> None:
        async with lock.batch():
            for k in range(chunks):
                order.append(f"{name}{k}")
                await asyncio.sleep(0)  # a turn of the event loop between chunks, as post_events yields

    async def erase(lock: UsersChanging) -> None:
        async with lock.alone():
            order.append("erase")
            await asyncio.sleep(0)
            order.append("erased")

    async def main() -> None:
        lock = UsersChanging()
        first = [asyncio.create_task(batch(lock, "a", 3)), asyncio.create_task(batch(lock, "b", 3))]
        await asyncio.sleep(0)
        erasure = asyncio.create_task(erase(lock))
        await asyncio.sleep(0)
        later = asyncio.create_task(batch(lock, "c", 2))  # comes while the erasure waits
        await asyncio.gather(*first, erasure, later)

    asyncio.run(main())
    assert order.index("a1") < order.index("b2") and order.index("b0") < order.index("a2")  # interleaved
    at = order.index("erase")
    assert set(order[:at]) == {"a0", "a1", "a2", "b0", "b1", "b2"}  # after every batch begun before it
    assert order[at + 1] == "erased" and order[at + 2:] == ["c0", "c1"]  # alone, then the batch that waited
