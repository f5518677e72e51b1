"""Authentication and authorisation, before anything else about a request is looked at (its body,
its parameters, whether the item exists): 401 without a valid key, 403 for a key outside the route's
scope or its region. A route's scope is its OpenAPI `x-scope`. A region-bound key's requests act in
its region: X-Region is set to it when absent, and a user of another region is refused. Every 403,
and 401s on privacy and admin routes, are audited as `refused`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from foryou.errors import FieldError, Forbidden, TooManyRequests
from foryou.http.errors import error_response, refusal
from foryou.http.limits import Limits
from foryou.http.refusals import Refusals
from foryou.privacy.audit import CALLER
from foryou.privacy.keys import ApiKey, KeyRing

OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
REGION_HEADER = b"x-region"


RouteTable = list[tuple[re.Pattern[str], frozenset[str], str, str]]
AUDITED_SCOPES = ("privacy", "admin")  # 401s on these routes are audited (every 403 is)


def route_table(routes: Iterable[BaseRoute]) -> RouteTable:
    """(path pattern, methods, scope, path template) of each route: a route's scope is its OpenAPI
    `x-scope`, and a route without one is admin-only."""
    return [(r.path_regex, frozenset(r.methods or ()),
             (getattr(r, "openapi_extra", None) or {}).get("x-scope", "admin"), r.path)
            for r in routes if isinstance(r, Route)]


def route_path(scope: Scope) -> str:
    """The request's path without the prefix the app is mounted under (`root_path`, set by a Mount or
    by a proxy's uvicorn `--root-path`), as the router matches it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):]
    return path


def required_scope(table: RouteTable, method: str, path: str) -> tuple[str | None, dict[str, str], str]:
    """The scope the route of `method` and `path` needs (None: no such route, so only an admin key may
    learn that), its path parameters and its template. A regex match per route, not the router's full
    match: it runs on every request, before the router matches again."""
    for pattern, methods, needed, template in table:
        found = pattern.match(path)
        if found is not None and method in methods:
            return needed, found.groupdict(), template
    return None, {}, "unmatched"


def check_region(key: ApiKey, user_ids: Iterable[str],
                 regions_of: Callable[[Iterable[str]], dict[str, str]]) -> None:
    """Refuse (403) a region-bound key a request about any user of another region (`regions_of`: the
    stored users' regions, one look-up for them all)."""
    if key.region is None:
        return
    ids = list(dict.fromkeys(user_ids))
    stored = regions_of(ids)
    for user_id in ids:
        found = stored.get(user_id)
        if found is not None and found != key.region:
            raise Forbidden(f"this key is for region {key.region!r}; user {user_id!r} is not of it",
                            field="authorization")


def check_named_region(key: ApiKey, region: str | None) -> None:
    """Refuse (403) a region-bound key a request that names another region (a profile's `region`)."""
    if key.region is not None and region is not None and region != key.region:
        raise Forbidden(f"this key is for region {key.region!r}", field="authorization")


class Auth:
    def __init__(self, app: ASGIApp, keys: KeyRing, routes: Callable[[], Iterable[BaseRoute]],
                 regions_of: Callable[[Iterable[str]], dict[str, str]], refusals: Refusals, limits: Limits) -> None:
        self.app = app
        self.keys = keys
        self.routes = routes
        self.regions_of = regions_of
        self.refusals = refusals
        self.limits = limits
        self.table: RouteTable | None = None  # built at the first request, when every route exists

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The path as the router sees it: without the prefix the app is mounted under (root_path)
        path = route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.table is None:
            self.table = route_table(self.routes())
        needed, params, template = required_scope(self.table, scope["method"], path)
        route = f"{scope['method']} {template}"
        sent = [v for k, v in scope.get("headers", ()) if k == b"authorization"]
        scheme, _, token = (sent[0] if len(sent) == 1 else b"").decode("latin-1").partition(" ")
        key = self.keys.authenticate(token.strip(), time.time()) if scheme.lower() == "bearer" else None
        if key is None:
            if needed in AUDITED_SCOPES:
                self.refusals.record(None, "Unauthorized", route, params.get("user_id"), self.refusals.peer(scope))
            problem = [FieldError("authorization", "a valid API key is required: one 'Authorization: Bearer <key>'")]
            await error_response(401, problem, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        try:
            self.limits.request(key.id)
        except TooManyRequests as exc:
            await refusal(exc)(scope, receive, send)
            return
        try:
            if not key.allows(needed or "admin"):  # fail closed: a path no route matches is admin-only
                raise Forbidden(f"this key lacks the {needed or 'admin'!r} scope", field="authorization")
            if key.region is not None:
                # every X-Region the request carries, not one: the app reads the first, a dict the last
                named = [v.decode("latin-1") for k, v in scope["headers"] if k == REGION_HEADER]
                if any(region != key.region for region in named):
                    raise Forbidden(f"this key is for region {key.region!r}", field="authorization")
                if "user_id" in params:
                    check_region(key, [params["user_id"]], self.regions_of)
                if not named:
                    scope = {**scope, "headers": [*scope["headers"], (REGION_HEADER, key.region.encode())]}
        except Forbidden as exc:
            self.refusals.record(key, "Forbidden", route, params.get("user_id"))
            await error_response(403, exc.errors)(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = key
        token_var = CALLER.set(key.id)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(token_var)
