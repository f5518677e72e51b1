"""Every error response is `{"errors": [{"field", "message", ("index")}]}`; never a stack trace."""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foryou.errors import FieldError, ForYouError, TooManyRequests
from foryou.types import ID_PATTERN, REGION_PATTERN, RFC3339_PATTERN

log = logging.getLogger("foryou.http")

_BATCH_KEYS = ("items", "events")
_PATTERN_MESSAGES = {
    ID_PATTERN: "must be 1-128 characters of A-Z a-z 0-9 . _ : -, and not . or ..",
    REGION_PATTERN: "must be a lowercase region code (a letter, then up to 15 letters, digits or -)",
    RFC3339_PATTERN: "must be an RFC 3339 timestamp with an offset, e.g. 2024-05-01T12:00:00Z",
}


def error_response(status: int, errors: list[FieldError], headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"errors": [e.as_dict() for e in errors]})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _headers(exc: ForYouError) -> dict[str, str] | None:
    """`Retry-After` for a rate limit (whole seconds, at least 1)."""
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return None


def refusal(exc: ForYouError) -> Response:
    """The response for an error raised outside the app's handlers (the middleware's)."""
    return error_response(exc.status, exc.errors, _headers(exc))


def field_error(err: dict[str, Any]) -> FieldError:
    loc = list(err.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    index = None
    if len(loc) >= 2 and loc[0] in _BATCH_KEYS and isinstance(loc[1], int):
        index, loc = loc[1], loc[2:]
    # pydantic names the model-level check by the validator; report the field it is about
    loc = [p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "tagged-union")))]
    message = str(err.get("msg", "invalid value"))
    if err.get("type") == "string_pattern_mismatch":
        message = _PATTERN_MESSAGES.get(str((err.get("ctx") or {}).get("pattern")), message)
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    field = ".".join(str(p) for p in loc)
    if field in ("item_id", "user_id"):  # path parameters: the same name as a 404 for them uses
        field = "id"
    if not field and "watch_s" in message:
        field = "watch_s"
    return FieldError(field, message, index)


def install(app: FastAPI) -> None:
    @app.exception_handler(ForYouError)
    async def _engine_error(_: Request, exc: ForYouError) -> Response:
        return error_response(exc.status, exc.errors, _headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, [FieldError("body", "malformed JSON")])
        if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
            return error_response(400, [FieldError("body", "a JSON body is required")])
        return error_response(422, [field_error(e) for e in errors])

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        message = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        field = "body" if exc.status_code in (408, 413) else ""
        return error_response(exc.status_code, [FieldError(field, message)], getattr(exc, "headers", None))



def describe(scope: Scope, exc: BaseException) -> str:
    """What an operator needs to find a bug, and nothing a request carried: the route's template (not
    the path, which holds ids), the exception's type and where it was raised. Not its message, which
    may quote a user id or a key."""
    route = getattr(scope.get("route"), "path", "unmatched")
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{scope.get('method')} {route}: {type(exc).__name__} at {where}"


class Shield:
    """The outermost middleware: an exception no handler took becomes a plain 500 and one log line
    from `describe`. Caught here, it never reaches Starlette's error middleware, which would re-raise
    it for the server to log with its message and stack."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.error("unexpected error: %s", describe(scope, exc))
            if not started:
                await error_response(500, [FieldError("", "internal error")])(scope, receive, send)
