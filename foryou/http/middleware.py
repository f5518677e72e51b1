"""Pure ASGI middleware: a body-size and body-time limit (413, even without a Content-Length; 408) and
request metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foryou.errors import FieldError
from foryou.http.errors import error_response
from foryou.metrics import Metrics


class BodyLimit:
    """At most `max_bytes` of body (413), all of it within `timeout_s` of the first read (408, and the
    connection is closed: the rest of the body would otherwise be read as the next request)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = [FieldError("body", f"request body exceeds {self.max_bytes} bytes")]
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await error_response(413, message)(scope, receive, send)
                    return
        seen, deadline, done = 0, 0.0, False

        async def limited() -> Message:
            # Raised inside the app, where the exception handlers turn them into 413 and 408 responses.
            nonlocal seen, deadline, done
            if done:  # the body is in: what comes now is a disconnect, whenever it comes
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise HTTPException(408, detail=f"the request body took over {self.timeout_s:g}s to arrive",
                                    headers={"Connection": "close"}) from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, detail=message[0].message)
                done = not msg.get("more_body", False)
            return msg

        await self.app(scope, limited, send)


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - start)
