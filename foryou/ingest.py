"""Event ingestion: validate a whole batch (plain events column by column, anything else through the
models), drop duplicates by idempotency key (a user's own: the same id from another user is another
event), append durably to each user's region log, then apply to the interest state of the users held in
memory (the others catch up from the log when read); the item aggregates and the model follow the log.
A batch with any invalid event changes nothing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from foryou.columns import EventColumns
from foryou.errors import FieldError, InvalidInput
from foryou.follower import LogFollower
from foryou.interest import UserState
from foryou.learning import Learner
from foryou.privacy.erasure import Tombstones
from foryou.state import Live
from foryou.state.fields import LiveUser
from foryou.types import EVENT_TYPES, ID_PATTERN, EventIn, EventRecord, UserRecord, parse_time

MAX_FUTURE_S = 300.0
_EVENT_FIELDS = frozenset(EventIn.model_fields)
_TYPES = frozenset(EVENT_TYPES)
_ID = re.compile(ID_PATTERN)
# The plain RFC 3339 shape (upper-case T and Z, at most microseconds), which datetime reads as it is;
# every other timestamp goes to the API's validation.
_PLAIN_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z"
_PLAIN_TIMES = re.compile(f"(?:{_PLAIN_TIME}\n)*{_PLAIN_TIME}")  # the batch's, joined by newlines
_FIRST = np.datetime64("0001-01-02T00:00:00", "us")


def plain_events(objects: list[Any], index: Mapping[str, int], now: float,
                 users: set[str]) -> EventColumns | None:
    """The columns of a batch of parsed events when every one is valid and of a plain shape; None
    otherwise (the API's validation then says what is wrong, or accepts a shape this does not take).
    It never accepts what the API refuses (tests/test_bulk.py checks it against the API's cases).
    Column by column: each check is one pass in C (a set of types, one regular expression over every
    timestamp, numpy's parse of them) or runs once per distinct value (ids, items, kinds).
    `users`: ids already found valid (few users, many events)."""
    if not objects:
        return EventColumns([], [], [], np.zeros(0), np.zeros(0), [], [])
    if _types(objects) != {dict} or not all(o.keys() <= _EVENT_FIELDS for o in objects):
        return None
    user, item, kind = _column(objects, "user"), _column(objects, "item"), _column(objects, "type")
    if _types(user) != {str} or _types(item) != {str} or _types(kind) != {str} or not set(kind) <= _TYPES:
        return None
    if not all(i in index for i in set(item)):  # catalogue ids were checked when upserted
        return None
    new = set(user) - users
    if not all(map(_ID.fullmatch, new)):
        return None
    users |= new
    watch = _watch(_column(objects, "watch_s"), kind)
    ts = _times(_column(objects, "ts"), now)
    event_id, request_id = _column(objects, "id"), _column(objects, "request_id")
    if watch is None or ts is None or not _lengths(event_id, 256) or not _lengths(request_id, 128):
        return None
    return EventColumns(user, item, kind, watch, ts, event_id, request_id)


def _types(values: list[Any]) -> set[type]:
    return set(map(type, values))


def _column(objects: list[dict[str, Any]], name: str) -> list[Any]:
    return [o.get(name) for o in objects]


def _watch(values: list[Any], kinds: list[str]) -> np.ndarray | None:
    """Watch seconds in [0, 86400]; absent only where the event is not a view (then 0)."""
    if not _types(values) <= {float, int, type(None)}:
        return None
    if None in values:
        if any(w is None and k == "view" for w, k in zip(values, kinds, strict=True)):
            return None
        values = [0.0 if w is None else w for w in values]
    try:
        watch = np.array(values, np.float64)
    except OverflowError:
        return None
    return watch if ((watch >= 0) & (watch <= 86400)).all() else None


def _times(values: list[Any], now: float) -> np.ndarray | None:
    """Epoch seconds of plain RFC 3339 timestamps (absent: `now`), none more than MAX_FUTURE_S ahead."""
    given = values if None not in values else [t for t in values if t is not None]
    if _types(given) - {str}:
        return None
    joined = "\n".join(given)  # one match for the batch; the count: no timestamp holds a newline itself
    if given and (not _PLAIN_TIMES.fullmatch(joined) or joined.count("\n") != len(given) - 1):
        return None
    try:  # numpy refuses impossible dates and times as datetime does (a 30 February, a 60th second)
        moments = np.array([t[:-1] for t in given], "datetime64[us]")
    except ValueError:
        return None
    if len(moments) and moments.min() < _FIRST:
        return None
    micros = moments.astype(np.int64)
    if len(micros) and np.abs(micros).max() >= 2 ** 53:  # beyond float's exact integers: as datetime divides
        seconds = np.array([m / 1_000_000 for m in micros.tolist()], np.float64)
    else:
        seconds = micros / 1e6
    if len(given) < len(values):
        out = np.full(len(values), now)
        out[[k for k, t in enumerate(values) if t is not None]] = seconds
        seconds = out
    return seconds if not len(seconds) or seconds.max() <= now + MAX_FUTURE_S else None


def _lengths(values: list[Any], most: int) -> bool:
    """Every value is absent or a string of 1 to `most` characters."""
    given = values if None not in values else [v for v in values if v is not None]
    return not given or (_types(given) == {str} and min(map(len, given)) >= 1 and max(map(len, given)) <= most)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(self.accepted + other.accepted, self.duplicates + other.duplicates)


class IngestService:
    def __init__(self, live: Live, learner: Learner | None = None, tombstones: Tombstones | None = None,
                 follower: LogFollower | None = None) -> None:
        self.live = live
        self.learner = learner
        self.tombstones = tombstones
        self.follower = follower  # follows the log at once after each append; None where it runs beside

    def ingest(self, events: Sequence[EventIn]) -> IngestResult:
        """Validate the whole batch, then append it."""
        return self.append(self.validate(events))

    def validate(self, events: Sequence[EventIn], region: str | None = None) -> EventColumns:
        """The checks that need the catalogue and the clock; raises `InvalidInput` listing them all.
        `region` is the one the request names (X-Region): every user in the batch must be of it."""
        live = self.live
        now = live.clock()
        index = live.catalog.index
        errors: list[FieldError] = []
        records: list[EventRecord] = []
        times: dict[str, float | ValueError] = {}  # a batch's events often share a timestamp
        for i, e in enumerate(events):
            if e.item not in index:
                errors.append(FieldError("item", f"unknown item {e.item!r}: upsert it first", i))
            ts = now
            if e.ts is not None:
                parsed = times.get(e.ts)
                if parsed is None:
                    try:
                        parsed = times[e.ts] = parse_time(e.ts, checked=True)
                    except ValueError as exc:
                        parsed = times[e.ts] = exc
                if isinstance(parsed, ValueError):
                    errors.append(FieldError("ts", str(parsed), i))
                else:
                    ts = parsed
            if ts > now + MAX_FUTURE_S:
                errors.append(FieldError("ts", "is more than 5 minutes in the future", i))
            records.append(EventRecord(e.user, e.item, e.type, e.watch_s or 0.0, ts, e.id, e.request_id))
        if errors:
            raise InvalidInput(errors)
        return self.check(EventColumns.of(records), region)

    def check(self, events: EventColumns, region: str | None = None) -> EventColumns:
        """The checks of stored state on events whose fields are valid: `region` is held and is each
        user's, and no user was erased lately (410). Returns `events`."""
        live = self.live
        live.check_held(region)  # even for an empty batch
        users = list(dict.fromkeys(events.user))
        if region is not None:
            live.place_many(users, region)
        if self.tombstones is not None:  # last: a 410 only for a batch otherwise valid
            self.tombstones.refuse(users, live.clock())
        return events

    def append(self, events: EventColumns | Sequence[EventRecord], region: str | None = None,
               hold_new: bool = True) -> IngestResult:
        """Append already-validated events; users not seen before are created in `region` (default:
        the server's first), atomically with their events. An event whose idempotency key its user's
        region already holds (or an earlier event of the batch) is dropped in the append's own
        transaction, so a concurrent duplicate counts once. Users in this server's memory, and new ones,
        have their interest state moved before this returns; the others are not read for it: their saved state
        catches up with the log when they are next read (`Users.catch_up`, by their newest event), so
        either way a user's next feed reflects the batch. The item aggregates, co-engagement and the
        model follow the log (`follower.py`), and derived state is checkpointed by the periodic work
        (`Engine.tick`), never here. Without `hold_new` (a bulk load: holding them would apply every
        event at once, twice the load's time) new users are not held either."""
        if not isinstance(events, EventColumns):
            events = EventColumns.of(events)
        live = self.live
        now = live.clock()
        users = list(dict.fromkeys(events.user))
        # memory for users held, one look-up per region for the others (not those a batch is placing:
        # new, or created by its chunk before this one)
        placed = live.regions_of([u for u in users if u not in live.pending])
        home = region or live.settings.server.regions[0]

        def region_of(user_id: str) -> str:
            held = live.users.get(user_id)
            return placed.get(user_id) or live.pending.get(user_id) or (held.profile.region if held else home)

        where_of = {u: region_of(u) for u in users}
        regions = set(where_of.values())
        if len(regions) == 1:
            by_region = {regions.pop(): events}
        else:
            positions: dict[str, list[int]] = {}
            for k, u in enumerate(events.user):
                positions.setdefault(where_of[u], []).append(k)
            by_region = {where: events.take(at) for where, at in positions.items()}
        accepted = 0
        for where, batch in by_region.items():
            mine = [u for u in users if where_of[u] == where]
            held = [live.users[u] for u in mine if u in live.users]
            created = {u: UserRecord(u, where, created_at=now) for u in mine if u not in placed}
            created.update((user.profile.id, user.profile) for user in held if not user.stored)
            appended = live.store.append_new_events(where, batch, list(created.values()), now)
            if len(appended.kept) < len(batch):
                batch = batch.take(appended.kept)
                kept = set(batch.user)
                held = [user for user in held if user.profile.id in kept]
            if not len(batch):
                continue
            # New users have nothing stored to read: they are held from now on, their events applied
            # at once, with the catalogue as it is now (folded later, a "not interested" or a follow
            # would take the creator an edit gave the item meanwhile).
            fresh = [LiveUser(created[u], UserState(served_seq=0), serving_loaded=True)  # nothing served before
                     for u in dict.fromkeys(batch.user) if u in created and u not in live.users] if hold_new else []
            for user in fresh:
                live.users[user.profile.id] = user
            held += fresh
            accepted += len(batch)
            seqs = range(appended.first, appended.first + len(batch))
            placed.update(dict.fromkeys(set(created) & set(batch.user), where))
            for user in held:
                live.mark_stored(user)
            # A user another server wrote about meanwhile is read again up to this batch, which then
            # applies as usual, and then brought past what came after it.
            moved = live.wrote(where, held)
            for user in moved:
                live.reload(user, through=seqs[0] - 1)
            if self.learner is not None:  # before the users' state moves on: the duel's fallback needs it
                self.learner.before_apply(where, batch, seqs)
            ids = {user.profile.id for user in held}  # only the users in memory: the others are not read
            at = [k for k, u in enumerate(batch.user) if u in ids] if ids else []
            live.apply_user_events(where, batch.records(appended.first, at), [seqs[k] for k in at], seqs[-1])
            for user in moved:
                live.catch_up(user.state, user.profile)
            if self.follower is not None:
                self.follower.take(where, batch, seqs)
            else:  # the follower runs beside the requests: it takes them from memory, later
                live.keep_appended(where, seqs[0], batch)
        return IngestResult(accepted, len(events) - accepted)


