"""The simulator talks to the engine the way a client does, through one small protocol with two
implementations: the Python API of an engine opened here (on a simulated clock), and the HTTP API of a
running server (`--url`, stdlib urllib only: httpx is a dev dependency)."""

from __future__ import annotations

import inspect
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from foryou.errors import ForYouError
from foryou.types import EventIn, ItemIn, UserIn

HTTP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Slot:
    """One served item, with the feed policy's account of why it is there (empty when not explained)."""

    id: str
    policy: tuple[str, ...] = ()


class SimClock:
    """The engine's clock in a simulation: whatever time the simulator has reached."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Client(Protocol):
    def upsert_items(self, items: Sequence[ItemIn]) -> None: ...

    def put_user(self, user: str, interests: Sequence[str]) -> None: ...

    def ingest(self, events: Sequence[EventIn]) -> None: ...

    def feed(self, user: str, n: int) -> list[Slot]: ...

    def item(self, item_id: str) -> dict[str, Any]: ...

    def tick(self) -> None:
        """The periodic work a server does between requests (the learner's joins, checkpoints, pools)."""

    def model(self) -> dict[str, Any]:
        """Whether the learned model serves and how many examples it learned (empty when unknown)."""

    def close(self) -> None: ...


def policy_of(explain: Any) -> tuple[str, ...]:
    """The `policy` entry of a feed item's explanation, read defensively (absent in older engines)."""
    if not isinstance(explain, dict):
        return ()
    policy = explain.get("policy")
    if isinstance(policy, str):
        return (policy,)
    if isinstance(policy, list | tuple):
        return tuple(str(p) for p in policy)
    return ()


class LocalClient:
    """An `Engine` in this process; `engine.clock` should be the simulation's `SimClock`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def upsert_items(self, items: Sequence[ItemIn]) -> None:
        self.engine.items.upsert(list(items))

    def put_user(self, user: str, interests: Sequence[str]) -> None:
        self.engine.users.put(user, UserIn(interests=list(interests)))

    def ingest(self, events: Sequence[EventIn]) -> None:
        if events:
            self.engine.events.ingest(list(events))

    def feed(self, user: str, n: int) -> list[Slot]:
        feeds = self.engine.feeds
        # an engine from before explanations has no `explain` keyword (asked, not caught: a TypeError
        # raised inside the engine must not pass for that)
        if "explain" in inspect.signature(feeds.feed).parameters:
            result = feeds.feed(user, n, explain=True)
        else:
            result = feeds.feed(user, n)
        return [Slot(i.id, policy_of(getattr(i, "explain", None))) for i in result.items]

    def item(self, item_id: str) -> dict[str, Any]:
        return dict(self.engine.items.get(item_id))

    def tick(self) -> None:
        learner, engine = self.engine.learner, self.engine
        # the engine's periodic work, as a server runs it; one from before `strict` ticks the learner alone
        if "strict" in inspect.signature(engine.tick).parameters:
            engine.tick(engine.clock(), strict=True)
        else:
            learner.tick(engine.clock())
        # A server bounds the re-indexing of each tick by wall time; a run must not depend on how fast
        # the machine is, so the index is brought up to date whatever it costs.
        learner.refresh_index()

    def model(self) -> dict[str, Any]:
        learner = self.engine.learner
        return {"serving": bool(learner.healthy), "examples": int(learner.examples)}

    def close(self) -> None:
        self.engine.close()


class HttpClient:
    """A ForYou server at `url`; `api_key` is sent as `Authorization: Bearer ...`."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ForYouError(f"{method} {path}: HTTP {exc.code}: {_message(exc.read())}", field="--url") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ForYouError(f"cannot reach {self.url}: {reason}", field="--url") from None

    def upsert_items(self, items: Sequence[ItemIn]) -> None:
        for lo in range(0, len(items), 5000):
            self._call("POST", "/v1/items",
                       {"items": [i.model_dump(exclude_none=True) for i in items[lo:lo + 5000]]})

    def put_user(self, user: str, interests: Sequence[str]) -> None:
        self._call("PUT", f"/v1/users/{urllib.parse.quote(user)}", {"interests": list(interests)})

    def ingest(self, events: Sequence[EventIn]) -> None:
        if events:
            self._call("POST", "/v1/events", {"events": [e.model_dump(exclude_none=True) for e in events]})

    def feed(self, user: str, n: int) -> list[Slot]:
        query = urllib.parse.urlencode({"n": n, "explain": "true"})  # an older server ignores `explain`
        body = self._call("GET", f"/v1/users/{urllib.parse.quote(user)}/feed?{query}")
        return [Slot(str(i["id"]), policy_of(i.get("explain"))) for i in body.get("items", [])]

    def item(self, item_id: str) -> dict[str, Any]:
        body = self._call("GET", f"/v1/items/{urllib.parse.quote(item_id)}")
        return body if isinstance(body, dict) else {}

    def tick(self) -> None:
        """The server ticks by itself."""

    def model(self) -> dict[str, Any]:
        return {}  # (the server's /metrics has it; not worth a Prometheus parser here)

    def close(self) -> None:
        """Nothing held open between requests."""


def _message(raw: bytes) -> str:
    """The first error message of an error body (`{"errors": [{"field", "message"}]}`), else the raw text."""
    try:
        errors = json.loads(raw).get("errors") or []
        first = errors[0]
        return f"{first.get('field', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError):
        return raw.decode(errors="replace")[:200]
