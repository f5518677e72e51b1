"""Event ingestion: validate a whole batch (plain events field by field, anything else through the
models), drop duplicates by idempotency key (a user's own: the same id from another user is another
event), append durably to each user's region log, then apply to the interest state of the users held in
memory (the others catch up from the log when read); the item aggregates and the model follow the log.
A batch with any invalid event changes nothing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foryou.errors import FieldError, InvalidInput
from foryou.follower import LogFollower
from foryou.learning import Learner
from foryou.privacy.erasure import Tombstones
from foryou.state import Live
from foryou.types import EVENT_TYPES, ID_PATTERN, EventIn, EventRecord, UserRecord, parse_time

MAX_FUTURE_S = 300.0
_EVENT_FIELDS = frozenset(EventIn.model_fields)
_TYPES = frozenset(EVENT_TYPES)
_ID = re.compile(ID_PATTERN)
# The plain RFC 3339 shape (upper-case T and Z, at most microseconds), which datetime reads as it is;
# every other timestamp goes to the API's validation.
_PLAIN_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_FIRST = datetime.fromisoformat("0001-01-02T00:00:00Z")


def plain_events(objects: list[Any], index: Mapping[str, int], now: float,
                 users: set[str]) -> list[EventRecord] | None:
    """The records of a batch of parsed events when every one is valid and of a plain shape; None
    otherwise (the API's validation then says what is wrong, or accepts a shape this does not take).
    It never accepts what the API refuses (tests/test_bulk.py checks it against the API's cases).
    `users`: ids already found valid (few users, many events)."""
    out: list[EventRecord] = []
    types, fields, match_id, plain_time = _TYPES, _EVENT_FIELDS, _ID.fullmatch, _PLAIN_TIME.fullmatch
    latest = now + MAX_FUTURE_S
    for o in objects:
        if type(o) is not dict or not o.keys() <= fields:
            return None
        user, item, kind = o.get("user"), o.get("item"), o.get("type")
        if type(user) is not str or type(item) is not str or type(kind) is not str or kind not in types:
            return None
        if item not in index:  # catalogue ids were checked when upserted
            return None
        if user not in users:
            if not match_id(user):
                return None
            users.add(user)
        watch = o.get("watch_s")
        if watch is None:
            if kind == "view":
                return None
            watch = 0.0
        elif (type(watch) is not float and type(watch) is not int) or not 0 <= watch <= 86400:
            return None
        ts = o.get("ts")
        if ts is None:
            ts = now
        else:
            if type(ts) is not str or not plain_time(ts):
                return None
            try:
                moment = datetime.fromisoformat(ts)
            except ValueError:  # an impossible date: the models' error
                return None
            if moment < _FIRST:
                return None
            ts = moment.timestamp()
            if ts > latest:
                return None
        event_id, request_id = o.get("id"), o.get("request_id")
        if event_id is not None and (type(event_id) is not str or not 1 <= len(event_id) <= 256):
            return None
        if request_id is not None and (type(request_id) is not str or not 1 <= len(request_id) <= 128):
            return None
        out.append(EventRecord(user, item, kind, float(watch), ts, event_id, request_id))
    return out


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

    def validate(self, events: Sequence[EventIn], region: str | None = None) -> list[EventRecord]:
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
        return self.check(records, region)

    def check(self, records: list[EventRecord], region: str | None = None) -> list[EventRecord]:
        """The checks of stored state on records whose fields are valid: `region` is held and is each
        user's, and no user was erased lately (410). Returns `records`."""
        live = self.live
        live.check_held(region)  # even for an empty batch
        if region is not None:
            live.place_many((r.user for r in records), region)
        if self.tombstones is not None:  # last: a 410 only for a batch otherwise valid
            self.tombstones.refuse(dict.fromkeys(r.user for r in records), live.clock())
        return records

    def append(self, records: Sequence[EventRecord], region: str | None = None) -> IngestResult:
        """Append already-validated records; users not seen before are created in `region` (default:
        the server's first), atomically with their events. Users in this server's memory have their
        interest state moved before this returns; the others are not read for it: their saved state
        catches up with the log when they are next read (`Users.catch_up`, by their newest event), so
        either way a user's next feed reflects the batch. The item aggregates, co-engagement and the
        model follow the log (`follower.py`), and derived state is checkpointed by the periodic work
        (`Engine.tick`), never here."""
        live = self.live
        now = live.clock()
        users = list(dict.fromkeys(r.user for r in records))
        # memory for users held, one look-up per region for the others (not those a batch is placing:
        # new, or created by its chunk before this one)
        placed = live.regions_of([u for u in users if u not in live.pending])
        home = region or live.settings.server.regions[0]

        def region_of(user_id: str) -> str:
            held = live.users.get(user_id)
            return placed.get(user_id) or live.pending.get(user_id) or (held.profile.region if held else home)

        by_region: dict[str, list[EventRecord]] = {}
        for r in records:
            by_region.setdefault(region_of(r.user), []).append(r)
        duplicates = 0
        for where, batch in by_region.items():
            fresh = _drop_known(batch, live.store.known_event_ids(
                where, [(r.user, r.id) for r in batch if r.id is not None]))
            duplicates += len(batch) - len(fresh)
            if not fresh:
                continue
            mine = list(dict.fromkeys(r.user for r in fresh))
            cached = [live.users[u] for u in mine if u in live.users]
            created = {u: UserRecord(u, where, created_at=now) for u in mine if u not in placed}
            created.update((user.profile.id, user.profile) for user in cached if not user.stored)
            seqs = live.store.append_events(where, fresh, list(created.values()), now)
            placed.update(dict.fromkeys(created, where))
            for user in cached:
                live.mark_stored(user)
            # A user another server wrote about meanwhile is read again up to this batch, which then
            # applies as usual, and then brought past what came after it.
            moved = live.wrote(where, cached)
            for user in moved:
                live.reload(user, through=seqs[0] - 1)
            if self.learner is not None:  # before the users' state moves on: the duel's fallback needs it
                self.learner.before_apply(where, fresh, seqs)
            live.apply_user_events(where, fresh, seqs)
            for user in moved:
                live.catch_up(user.state, user.profile)
            if self.follower is not None:
                self.follower.take(where, fresh, seqs)
        return IngestResult(len(records) - duplicates, duplicates)


def _drop_known(records: Sequence[EventRecord], known: set[tuple[str, str]]) -> list[EventRecord]:
    """The records whose idempotency key (user, id) is neither `known` nor repeated earlier in the batch."""
    fresh: list[EventRecord] = []
    for r in records:
        if r.id is not None:
            pair = (r.user, r.id)
            if pair in known:
                continue
            known.add(pair)
        fresh.append(r)
    return fresh
