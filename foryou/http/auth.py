"""Authentication and authorisation, before anything else about a request is looked at (its body,
its parameters, whether the item exists): 401 without a valid key, 403 for a key outside the route's
scope or its region. A route's scope is its OpenAPI `x-scope`. A region-bound key's requests act in
its region: X-Region is set to it when absent, and a user of another region is refused."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from foryou.errors import FieldError, Forbidden
from foryou.http.errors import error_response
from foryou.privacy.audit import CALLER
from foryou.privacy.keys import ApiKey, KeyRing

OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
REGION_HEADER = b"x-region"


RouteTable = list[tuple[re.Pattern[str], frozenset[str], str]]


def route_table(routes: Iterable[BaseRoute]) -> RouteTable:
    """(path pattern, methods, scope) of each route: a route's scope is its OpenAPI `x-scope`, and a
    route without one is admin-only."""
    return [(r.path_regex, frozenset(r.methods or ()),
             (getattr(r, "openapi_extra", None) or {}).get("x-scope", "admin")) for r in routes if isinstance(r, Route)]


def required_scope(table: RouteTable, method: str, path: str) -> tuple[str | None, dict[str, str]]:
    """The scope the route of `method` and `path` needs (None: no such route; any valid key may learn
    that) and its path parameters. A regex match per route, not the router's full match: it runs on
    every request, before the router matches again."""
    for pattern, methods, needed in table:
        found = pattern.match(path)
        if found is not None and method in methods:
            return needed, found.groupdict()
    return None, {}


def check_region(key: ApiKey, user_ids: Iterable[str], region_of: Callable[[str], str | None]) -> None:
    """Refuse (403) a region-bound key a request about any user of another region."""
    if key.region is None:
        return
    for user_id in user_ids:
        found = region_of(user_id)
        if found is not None and found != key.region:
            raise Forbidden(f"this key is for region {key.region!r}; user {user_id!r} is not of it",
                            field="authorization")


def check_named_region(key: ApiKey, region: str | None) -> None:
    """Refuse (403) a region-bound key a request that names another region (a profile's `region`)."""
    if key.region is not None and region is not None and region != key.region:
        raise Forbidden(f"this key is for region {key.region!r}", field="authorization")


class Auth:
    def __init__(self, app: ASGIApp, keys: KeyRing, routes: Callable[[], Iterable[BaseRoute]],
                 region_of: Callable[[str], str | None]) -> None:
        self.app = app
        self.keys = keys
        self.routes = routes
        self.region_of = region_of
        self.table: RouteTable | None = None  # built at the first request, when every route exists

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        key = self.keys.authenticate(token.strip(), time.time()) if scheme.lower() == "bearer" else None
        if key is None:
            problem = [FieldError("authorization", "a valid API key is required: 'Authorization: Bearer <key>'")]
            await error_response(401, problem, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if self.table is None:
            self.table = route_table(self.routes())
        needed, params = required_scope(self.table, scope["method"], scope["path"])
        try:
            if needed is not None and not key.allows(needed):
                raise Forbidden(f"this key lacks the {needed!r} scope", field="authorization")
            if key.region is not None:
                # every X-Region the request carries, not one: the app reads the first, a dict the last
                named = [v.decode("latin-1") for k, v in scope["headers"] if k == REGION_HEADER]
                if any(region != key.region for region in named):
                    raise Forbidden(f"this key is for region {key.region!r}", field="authorization")
                if "user_id" in params:
                    check_region(key, [params["user_id"]], self.region_of)
                if not named:
                    scope = {**scope, "headers": [*scope["headers"], (REGION_HEADER, key.region.encode())]}
        except Forbidden as exc:
            await error_response(403, exc.errors)(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = key
        token_var = CALLER.set(key.id)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(token_var)
