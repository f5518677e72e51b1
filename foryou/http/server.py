"""Running the app under uvicorn with the protections a public port needs: a connection must send
its request headers within `server.header_timeout_s` of opening (or of its last response), and its
body within `server.body_timeout_s` after them, so a client trickling headers or a body, or sending
nothing, cannot hold a connection; idle keep-alive connections close after `server.keep_alive_s`; at
most `server.max_concurrency` connections and requests at once (503 beyond). What a proxy in front
must still add is in docs/privacy.md."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from foryou.config import Settings
from foryou.periodic import Periodic


class _Deadlines(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection whose request line and headers take longer than
    `header_timeout_s`, or whose body takes longer than `body_timeout_s` after them (uvicorn itself
    times out only idle keep-alive connections). The body's deadline holds whether or not the app reads
    the body: a request refused at once (401, 403, 429) must not leave its connection open to a client
    trickling the rest. (An app that is reading gets a 408 out first: BodyLimit's deadline is shorter.)"""

    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def on_message_begin(self) -> None:  # the next request on a kept-alive connection
        super().on_message_begin()
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._arm(self.body_timeout_s + 1.0)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol(header_timeout_s: float, body_timeout_s: float = 30.0) -> type[HttpToolsProtocol]:
    """The HTTP protocol class for uvicorn, with these deadlines."""
    return type("Deadlines", (_Deadlines,), {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})


def config(app: Any, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    server = settings.server
    return uvicorn.Config(app, host=server.host, port=server.port,
                          http=protocol(server.header_timeout_s, server.body_timeout_s),
                          timeout_keep_alive=max(1, round(server.keep_alive_s)),
                          limit_concurrency=server.max_concurrency, log_level="warning", access_log=False, **kwargs)


def run(app: Any, settings: Settings) -> None:
    """Serve until interrupted, with full garbage collections as periodic work."""
    collect_periodically(app.state.engine.periodic)
    uvicorn.Server(config(app, settings)).run()


def collect_periodically(periodic: Periodic) -> None:
    """The cyclic garbage collector's full collections walk every container alive (each user's served
    set among them) and held whichever request they fell into for tens of milliseconds: they run as a
    periodic task (`gc`) instead, every GC_EVERY_S, and what survives one is set aside, so that the next
    walks only what came since. For the server process: it changes the process's collector."""
    gc.set_threshold(*gc.get_threshold()[:2], FULL_NEVER)
    collect_garbage()
    last = [time.monotonic()]

    def every_while(now: float) -> None:
        if time.monotonic() - last[0] >= GC_EVERY_S:
            last[0] = time.monotonic()
            collect_garbage()

    periodic.add("gc", every_while)


FULL_NEVER = 1 << 30  # the collector's own full collections: never (the periodic work runs them)
GC_EVERY_S = 30.0


def collect_garbage(_: float = 0.0) -> None:
    """A full collection, then everything alive set aside (`gc.freeze`): long-lived state is walked
    once, not at every collection. Cycles that later form among set-aside objects are not collected;
    the engine's long-lived state holds none."""
    gc.collect()
    gc.freeze()
