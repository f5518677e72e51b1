"""The HTTP API (FastAPI, documented at /docs). Handlers are async and call the engine directly:
the engine is single-threaded by design, and its work per request is short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError
from starlette.responses import PlainTextResponse, Response

from foryou import __version__
from foryou.columns import EventColumns
from foryou.engine import TICK_S, Engine
from foryou.errors import InvalidInput, MalformedRequest
from foryou.http import errors
from foryou.http.auth import OPEN_PATHS, Auth, check_named_region, check_region
from foryou.http.batches import UsersChanging
from foryou.http.holds import time_holds
from foryou.http.limits import Limits
from foryou.http.middleware import BodyLimit, RequestMetrics
from foryou.http.refusals import Refusals
from foryou.ingest import IngestResult, plain_events
from foryou.metrics import LAG_PROBE_S, Metrics
from foryou.periodic import where
from foryou.privacy.keys import KeyRing
from foryou.types import ID_PATTERN, REGION_PATTERN, ControlsIn, EventBatch, ItemBatch, UserIn

IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="1-128 chars of [A-Za-z0-9._:-], not . or ..")]
XRegion = Annotated[str | None, Header(
    alias="X-Region", pattern=REGION_PATTERN,
    description="the user's region; a region this server does not hold, or not the user's, is refused (409)")]


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


M = TypeVar("M", bound=BaseModel)
MAX_SLICES = 10  # runs of a task with more to do, per round of the periodic work
MAX_EVENTS = 10_000  # a batch's most (`EventBatch`)
INGEST_CHUNK = 256  # events appended between two turns of the event loop (~6-10 ms a chunk: no learning)
FOLLOW_PAGE = 128  # events the log follower takes at a time (learning inline: ~5-10 ms; without: ~0.5 ms)
# ... and pages it takes in one turn of the event loop, until this long has passed: one page a turn fell
# behind by 100,000 events a minute at 5,000 events/s with feeds at 4 connections (a turn is a feed).
FOLLOW_BUDGET_S = 0.002
# ... and up to this long a turn while more than FOLLOW_LATE events wait (about a second of the soak's
# 5,000 events/s): item-level state stays within about a second of the log. With the fixed 2 ms, feeds
# saturating the loop and co-engagement counted by the follower, it fell 67,000 behind in 30 minutes.
FOLLOW_LATE = 5_000
FOLLOW_LATE_BUDGET_S = 0.010
FOLLOW_IDLE_S = 0.05  # how long the follower sleeps once it has caught up with the log
_BODIES: dict[str, type[BaseModel]] = {}
log = logging.getLogger("foryou.http")


def _op(scope: str, body: type[BaseModel] | None = None) -> dict[str, Any]:
    """OpenAPI extras: the scope a key needs (`x-scope`, which the auth middleware enforces), and a
    body we parse ourselves (JSON whatever the Content-Type, with orjson speed)."""
    extra: dict[str, Any] = {"x-scope": scope}
    if body is not None:
        _BODIES[body.__name__] = body
        ref = {"$ref": f"#/components/schemas/{body.__name__}"}
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    return extra


async def parse(request: Request, model: type[M]) -> M:
    return parse_raw(await request.body(), model)


def parse_raw(raw: bytes, model: type[M]) -> M:
    if not raw.strip():
        raise MalformedRequest("a JSON body is required", field="body")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = exc.errors()
        if any(p["type"] == "json_invalid" for p in problems):
            raise MalformedRequest("malformed JSON", field="body") from None
        if any(p["type"] == "model_type" and not p["loc"] for p in problems):
            raise MalformedRequest("the body must be a JSON object", field="body") from None
        raise InvalidInput([errors.field_error(dict(p)) for p in problems]) from None


def _plain_batch(raw: bytes, engine: Engine) -> EventColumns | None:
    """The columns of a body `{"events": [...]}` of plain events, checked column by column
    (`plain_events`: several times cheaper than the models); None for anything else, which the models
    then validate, so that every error is theirs."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or body.keys() != {"events"} or type(body["events"]) is not list \
            or len(body["events"]) > MAX_EVENTS:
        return None
    return plain_events(body["events"], engine.live.catalog.index, engine.live.clock(), set())


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _BODIES.items():
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[name] = body
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path not in OPEN_PATHS:
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


async def _probe_lag(metrics: Metrics) -> None:
    """How late the loop wakes a short sleep: what a request or a tick held it for (/metrics)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        metrics.observe_lag(max(0.0, loop.time() - started - LAG_PROBE_S))


async def _ticks(engine: Engine) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        await run_periodic(engine)


async def _follow(engine: Engine) -> None:
    """The log follower beside the requests: pages for up to `FOLLOW_BUDGET_S` a turn of the event
    loop while the log is ahead (`FOLLOW_LATE_BUDGET_S` while it is far behind), then a short sleep
    (its failures are counted and retried as any periodic task's)."""
    regions = engine.live.catalog.regions
    while True:
        try:
            started = time.perf_counter()
            late = sum(engine.items_behind(r) for r in regions) > FOLLOW_LATE
            budget = FOLLOW_LATE_BUDGET_S if late else FOLLOW_BUDGET_S
            more = engine.periodic.run(engine.clock(), only="follow")
            while more and time.perf_counter() - started < budget:
                more = engine.periodic.run(engine.clock(), only="follow")
            if "model" in engine.periodic.tasks:  # a published model version, taken in as soon
                engine.periodic.run(engine.clock(), only="model")
        except Exception as exc:  # anything else must not end the loop either
            log.error("the log follower failed outside its task: %s", where(exc))
            more = False
        await asyncio.sleep(0 if more else FOLLOW_IDLE_S)


async def run_periodic(engine: Engine, slices: int = MAX_SLICES) -> None:
    """One round of the periodic work: a task at a time, and a task with more to do at once (a
    checkpoint behind a backlog of users) again, up to `slices` times, with requests let in between."""
    for name in list(engine.periodic.tasks):
        if name in ("follow", "model"):  # the log follower and the model's poll run beside (`_follow`)
            continue
        for _ in range(slices):
            try:
                more = engine.periodic.run(engine.clock(), only=name)  # a task's failure is counted, not raised
            except Exception as exc:  # anything else must not end the loop either
                log.error("periodic work failed outside its tasks: %s", where(exc))
                more = False
            await asyncio.sleep(0)
            if not more:
                break


def create_app(engine: Engine, keys: KeyRing, metrics: Metrics | None = None) -> FastAPI:
    """The app over `engine`; every route but /healthz and the docs needs one of `keys`."""
    metrics = metrics or Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        time_holds(asyncio.get_running_loop(), metrics)
        engine.follow_beside(FOLLOW_PAGE)  # requests stop waiting for the follower: it runs beside them
        # on the event loop: between requests, never during one
        tasks = [asyncio.create_task(_ticks(engine)), asyncio.create_task(_follow(engine)),
                 asyncio.create_task(_probe_lag(metrics))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    app = FastAPI(title="ForYou", version=__version__, default_response_class=JSON, lifespan=lifespan,
                  description="A real-time For You feed engine: catalogue, events, feeds.")
    errors.install(app)
    server = engine.settings.server
    app.add_middleware(BodyLimit, max_bytes=int(server.max_body_mb * 1024 * 1024), timeout_s=server.body_timeout_s)
    refusals = Refusals(engine.audit, engine.clock, server.trusted_proxies)
    limits = Limits(engine.settings.limits)
    app.add_middleware(Auth, keys=keys, routes=lambda: app.router.routes, regions_of=engine.live.regions_of,
                       refusals=refusals, limits=limits)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(errors.Shield)
    app.state.engine = engine
    app.state.limits = limits
    app.state.keys = keys
    # A large batch of events yields between chunks (so that feeds get in); batches interleave, but an
    # erasure meanwhile would be undone by the later chunks, so it waits for them (batches.py); the
    # batch's new users are placed in their region at once (`Live.placing`), so that a feed or a
    # profile meanwhile finds them there.
    users_changing = UsersChanging()
    app.state.metrics = metrics

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSON:
        """200 `{"status": "ok"}`; 503 `{"status": "degraded", "failing": [...]}` while a periodic task
        (learning, checkpoint, retention, gc) has failed three times in a row, or the trainer process
        has exited three times in a row without running half a minute ("trainer")."""
        failing = engine.periodic.failing()
        if engine.trainer is not None and engine.trainer.failing:
            failing = [*failing, "trainer"]
        if failing:
            return JSON({"status": "degraded", "failing": failing}, status_code=503)
        return JSON({"status": "ok"})

    @app.post("/v1/items", tags=["catalogue"], openapi_extra=_op("catalog", ItemBatch))
    async def upsert_items(request: Request) -> JSON:
        """Upsert up to 10,000 items by id; counters and takedown state are kept."""
        batch = await parse(request, ItemBatch)
        return JSON({"upserted": engine.items.upsert(batch.items)})

    @app.get("/v1/items/{item_id}", tags=["catalogue"], openapi_extra=_op("catalog"))
    async def get_item(item_id: IdPath) -> JSON:
        """The item with its live counters (`stats`)."""
        return JSON(engine.items.get(item_id))

    @app.delete("/v1/items/{item_id}", tags=["catalogue"], openapi_extra=_op("catalog"))
    async def take_down(item_id: IdPath) -> JSON:
        """Take an item down: it is never served again (until restored)."""
        return JSON(engine.items.set_down(item_id, True))

    @app.post("/v1/items/{item_id}/restore", tags=["catalogue"], openapi_extra=_op("catalog"))
    async def restore(item_id: IdPath) -> JSON:
        return JSON(engine.items.set_down(item_id, False))

    @app.put("/v1/users/{user_id}", tags=["users"], openapi_extra=_op("feed", UserIn))
    async def put_user(user_id: IdPath, request: Request, region: XRegion = None) -> JSON:
        """Set the fields given; the rest are left as they are. A region is fixed once set."""
        body = await parse(request, UserIn)
        with refusals.watching(request.state.key, "PUT /v1/users/{user_id}", user_id):
            check_named_region(request.state.key, body.region)
        limits.new_users(request.state.key.id, len(engine.live.unknown([user_id])))
        return JSON(engine.users.put(user_id, body, region))

    @app.get("/v1/users/{user_id}", tags=["users"], openapi_extra=_op("feed"))
    async def get_user(user_id: IdPath, region: XRegion = None) -> JSON:
        return JSON(engine.users.get(user_id, region))

    @app.get("/v1/users/{user_id}/controls", tags=["users"], openapi_extra=_op("feed"))
    async def get_controls(user_id: IdPath, region: XRegion = None) -> JSON:
        """The user's keyword filters, topic weights and last refresh."""
        return JSON(engine.users.controls(user_id, region))

    @app.put("/v1/users/{user_id}/controls", tags=["users"], openapi_extra=_op("feed", ControlsIn))
    async def put_controls(user_id: IdPath, request: Request, region: XRegion = None) -> JSON:
        """Replace the fields given: `blocked_keywords` (up to 200; never serve an item whose caption or
        tags or topic contain one, case-insensitive, singular or plural) and `topic_weights` (-1..1: less or more
        of a topic, never none). They apply from the next request."""
        return JSON(engine.users.set_controls(user_id, await parse(request, ControlsIn), region))

    @app.delete("/v1/users/{user_id}", tags=["privacy"], openapi_extra=_op("privacy"))
    async def erase(user_id: IdPath, region: XRegion = None) -> JSON:
        """Erase the user: everything held about them is deleted and a receipt returned; their events and
        requests are refused (410) for `privacy.erasure_refuse_days`."""
        async with users_changing.alone():
            return JSON(engine.erasure.erase(user_id, region))

    @app.get("/v1/users/{user_id}/data", tags=["privacy"], openapi_extra=_op("privacy"))
    async def export(user_id: IdPath, region: XRegion = None) -> JSON:
        """Everything held about the user (right of access and portability): profile, controls, events,
        served history, inferred interests with weights, and the learned user vector."""
        return JSON(engine.privacy.export(user_id, region))

    @app.post("/v1/users/{user_id}/refresh", tags=["users"], openapi_extra=_op("feed"))
    async def refresh(user_id: IdPath, region: XRegion = None) -> JSON:
        """Start personalisation afresh, as if new; history is kept but no longer used to recommend."""
        return JSON(engine.users.refresh(user_id, region))

    @app.post("/v1/events", tags=["events"], openapi_extra=_op("events", EventBatch))
    async def post_events(request: Request, region: XRegion = None) -> JSON:
        """Up to 10,000 events; a 200 means they are durable. Repeated event ids count once. Users not
        seen before are created in X-Region (default: the server's first region)."""
        raw = await request.body()
        plain = _plain_batch(raw, engine)
        given = parse_raw(raw, EventBatch).events if plain is None else []
        async with users_changing.batch():  # from the checks to the last chunk
            with refusals.watching(request.state.key, "POST /v1/events"):
                check_region(request.state.key, plain.user if plain is not None else [e.user for e in given],
                             engine.live.regions_of)
            events = engine.events.check(plain, region) if plain is not None else engine.events.validate(given, region)
            users = set(events.user)
            limits.new_users(request.state.key.id, len(engine.live.unknown(users)))
            result = IngestResult(0, 0)
            with engine.live.placing(users, region):  # new users' region, told to others
                for part in events.split(INGEST_CHUNK):
                    await asyncio.sleep(0)  # let feed requests in: after the checks, between chunks
                    result += engine.events.append(part, region=region)
        metrics.inc("events_ingested_total", result.accepted)
        metrics.inc("events_duplicate_total", result.duplicates)
        return JSON({"accepted": result.accepted, "duplicates": result.duplicates})

    @app.get("/v1/users/{user_id}/feed", tags=["feed"], openapi_extra=_op("feed"))
    async def feed(request: Request, user_id: IdPath, n: Annotated[int, Query(ge=1, le=100)] = 10,
                   explain: Annotated[bool, Query()] = False, region: XRegion = None) -> JSON:
        """The user's next `n` videos; each served item is recorded and never served again. With
        `explain=true` each item says why: its sources, each head's prediction, the weights, its value
        and the policy steps that placed it."""
        limits.new_users(request.state.key.id, len(engine.live.unknown([user_id])))  # a feed creates a new user
        result = engine.feeds.feed(user_id, n, explain, region)
        if result.over_budget:
            metrics.inc("feed_budget_exceeded_total")
        metrics.inc("feeds_served_total")
        metrics.inc("feed_items_served_total", len(result.items))
        return JSON(result.as_dict())

    @app.get("/v1/algorithm", tags=["feed"], openapi_extra=_op("admin"))
    async def algorithm() -> JSON:
        """The algorithm card: the live value weights, candidate budgets and policy settings."""
        return JSON(engine.feeds.algorithm())

    @app.get("/v1/audit", tags=["privacy"], openapi_extra=_op("admin"))
    async def audit(after: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSON:
        """The audit log, oldest first: records with `seq` > `after` (at most `limit`). Reading it is
        itself recorded."""
        records = engine.audit.page(after, limit)
        engine.audit.append("audit_read", None, "ok", engine.clock())
        return JSON({"records": records, "next": records[-1]["seq"] if len(records) == limit else None})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, openapi_extra=_op("admin"))
    async def prometheus() -> PlainTextResponse:
        """Prometheus metrics (admin: each scrape is audited like every admin call)."""
        engine.audit.append("metrics_read", None, "ok", engine.clock())
        live = engine.live
        gauges = {
            "catalog_items": float(len(live.catalog)),
            "catalog_items_live": float(live.catalog.alive[: len(live.catalog)].sum()),
            "users_cached": float(len(live.users)),
            "checkpoint_age_seconds": engine.clock() - live.last_checkpoint,
            "log_follower_events_behind": float(sum(engine.items_behind(r) for r in live.catalog.regions)),
            **engine.learner.gauges(),
            **({"trainer_restarts": float(engine.trainer.restarts)} if engine.trainer is not None else {}),
        }
        failures, failing = engine.periodic.failures, set(engine.periodic.failing())
        labelled = {"periodic_failures_total": ("counter", "task", {k: float(v) for k, v in failures.items()}),
                    "periodic_failing": ("gauge", "task", {k: float(k in failing) for k in failures})}
        histograms = {"model_update_lag_seconds": engine.learner.lag}
        return PlainTextResponse(metrics.render(gauges, labelled, histograms), media_type="text/plain; version=0.0.4")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
