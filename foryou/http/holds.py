"""How long each piece of work holds the event loop. The server runs every request and its periodic
work on one event loop: while one step of a task runs (from one `await` to the next), nothing else
can. Every task's steps are timed, through a task factory that wraps its coroutine, and counted in
`foryou_loop_hold_seconds` by kind: `request` (a request's handling) or `periodic` (the ticks). A
lag probe (`foryou_event_loop_lag_seconds`) says how long work waited; a hold says which work made
it wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Generator
from typing import Any

from foryou.metrics import Metrics

PERIODIC = frozenset({"_ticks", "_follow", "_probe_lag"})  # the app's own background tasks, by coroutine name


class _Timed(Coroutine[Any, Any, Any]):
    """A coroutine that times each step of the one it wraps."""

    def __init__(self, coro: Coroutine[Any, Any, Any], kind: str, metrics: Metrics) -> None:
        self.coro = coro
        self.kind = kind
        self.metrics = metrics

    def send(self, value: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.coro.send(value)
        finally:
            self.metrics.observe_hold(self.kind, time.perf_counter() - started)

    def throw(self, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.coro.throw(*args)
        finally:
            self.metrics.observe_hold(self.kind, time.perf_counter() - started)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> _Timed:
        return self


def time_holds(loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
    """Time every task created on `loop` from now on (requests included: uvicorn makes one each)."""

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        name = getattr(coro, "__name__", "")
        kind = "periodic" if name in PERIODIC else "request"
        return asyncio.Task(_Timed(coro, kind, metrics), loop=loop, **kwargs)

    loop.set_task_factory(factory)
