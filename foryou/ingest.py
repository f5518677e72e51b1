"""Event ingestion: validate a whole batch, drop duplicates by idempotency key, append durably to each
user's region log, then apply to the live state. A batch with any invalid event changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foryou.errors import FieldError, InvalidInput
from foryou.live import Live
from foryou.types import EventIn, EventRecord, UserRecord, parse_time

MAX_FUTURE_S = 300.0


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


class IngestService:
    def __init__(self, live: Live) -> None:
        self.live = live

    def ingest(self, events: Sequence[EventIn]) -> IngestResult:
        live = self.live
        now = live.clock()
        index = live.catalog.index
        errors: list[FieldError] = []
        records: list[EventRecord] = []
        for i, e in enumerate(events):
            if e.item not in index:
                errors.append(FieldError("item", f"unknown item {e.item!r}: upsert it first", i))
            ts = parse_time(e.ts) if e.ts is not None else now
            if ts > now + MAX_FUTURE_S:
                errors.append(FieldError("ts", "is more than 5 minutes in the future", i))
            records.append(EventRecord(e.user, e.item, e.type, e.watch_s or 0.0, ts, e.id, e.request_id))
        if errors:
            raise InvalidInput(errors)
        return self.append(records)

    def append(self, records: Sequence[EventRecord]) -> IngestResult:
        """Append already-validated records (also the bulk loader's entry point)."""
        live = self.live
        ids = [r.id for r in records if r.id is not None]
        known = live.store.known_event_ids(ids) if ids else set()
        by_region: dict[str, list[EventRecord]] = {}
        new_users: dict[str, list[UserRecord]] = {}
        duplicates = 0
        for r in records:
            if r.id is not None:
                if r.id in known:
                    duplicates += 1
                    continue
                known.add(r.id)
            region = live.region_of(r.user)
            if region is None:
                user = live.user(r.user)
                region = user.profile.region
                if not user.stored:
                    user.stored = True
                    new_users.setdefault(region, []).append(user.profile)
            by_region.setdefault(region, []).append(r)
        for region, batch in by_region.items():
            seqs = live.store.append_events(region, batch, new_users.get(region, []))
            for r, seq in zip(batch, seqs, strict=True):
                live.apply_event(region, EventRecord(r.user, r.item, r.type, r.watch_s, r.ts, r.id,
                                                     r.request_id, seq))
        live.maybe_checkpoint()
        return IngestResult(len(records) - duplicates, duplicates)
