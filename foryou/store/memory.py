"""`memory://NAME`: the whole store in this process's memory, gone when the process ends.

A second backend for the one conformance suite, so that the storage contract is proven on more than
SQLite before Redis arrives, and a store for tests and experiments that need no files. Opening the same
NAME again in the same process reaches the same data (the suite's reopen checks). Like every store it
is used from one thread at a time; records go in and come out as copies, as they would from a file.
A user's rows are found by scanning the region: fine for tests and experiments, not for a large log.
Each write builds what it changes first and applies it after, so a write that fails half-way (an
input that raises while read) changes nothing.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from foryou.columns import EventColumns
from foryou.errors import Conflict, Stale
from foryou.store.base import (
    Appended,
    EventAppends,
    event_key,
    event_key_secret,
    event_keys,
    first_catalogue_version,
    first_new,
)
from foryou.types import EventRecord, ItemRecord, ServedRecord, UserRecord


@dataclass
class _Region:
    """One region's data: everything about its users."""

    users: dict[str, UserRecord] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # the users' versions (`Profiles`), while stored
    last_events: dict[str, int] = field(default_factory=dict)  # each user's newest event seq
    controls: dict[str, bytes] = field(default_factory=dict)
    events: dict[int, EventRecord] = field(default_factory=dict)  # by seq
    event_seqs: list[int] = field(default_factory=list)  # ascending: a page of the log by bisection
    event_keys: dict[int, float] = field(default_factory=dict)  # keyed hash -> accepted at
    served: dict[int, ServedRecord] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    state_mark: int = 0
    model_rows: dict[tuple[str, str], bytes] = field(default_factory=dict)
    model_vers: dict[tuple[str, str], int] = field(default_factory=dict)
    last_event: int = 0  # seqs are never handed out twice, even after the newest rows are erased
    last_served: int = 0


@dataclass
class _Data:
    """The shared data (catalogue, item aggregates, shared model rows) and each region's."""

    items: dict[str, ItemRecord] = field(default_factory=dict)  # insertion order, kept on replacement
    catalogue_version: int = 0
    item_vers: dict[str, int] = field(default_factory=dict)
    stats: dict[str, list[float]] = field(default_factory=dict)
    trend: dict[str, dict[str, float]] = field(default_factory=dict)
    coeng: dict[str, bytes] = field(default_factory=dict)
    watermarks: dict[str, tuple[int, int]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    model_rows: dict[tuple[str, str], bytes] = field(default_factory=dict)
    model_vers: dict[tuple[str, str], int] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    deltas: dict[int, bytes] = field(default_factory=dict)  # model version -> item-side rows it published
    tombstones: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, dict[int, str]] = field(default_factory=dict)
    regions: dict[str, _Region] = field(default_factory=dict)


_NAMESPACES: dict[str, _Data] = {}


class MemoryStore(EventAppends):
    """`Store` in memory, in namespace `name` of this process."""

    def __init__(self, name: str, regions: Sequence[str], secret: bytes = b"") -> None:
        self.regions = tuple(regions)
        self._id_key = event_key_secret(secret)
        self._data = _NAMESPACES.setdefault(name, _Data())
        for region in self.regions:
            self._data.regions.setdefault(region, _Region())

    def _r(self, region: str) -> _Region:
        return self._data.regions[region]

    # -- catalogue --
    def upsert_items(self, items: Sequence[ItemRecord]) -> None:
        data = self._data
        put = {i.id: replace(i) for i in list(items)}
        data.catalogue_version = data.catalogue_version + 1 if data.catalogue_version else first_catalogue_version()
        data.items.update(put)
        data.item_vers.update(dict.fromkeys(put, data.catalogue_version))

    def get_item(self, item_id: str) -> ItemRecord | None:
        found = self._data.items.get(item_id)
        return None if found is None else replace(found)

    def iter_items(self) -> Iterator[ItemRecord]:
        yield from [replace(i) for i in self._data.items.values()]

    def catalogue_version(self) -> int:
        return self._data.catalogue_version

    def items_since(self, version: int) -> list[ItemRecord]:
        vers = self._data.item_vers
        return [replace(i) for i in self._data.items.values() if vers[i.id] > version]

    def save_vocab(self, kind: str, start: int, names: Sequence[str]) -> None:
        codes = self._data.vocab.setdefault(kind, {})
        for k, name in enumerate(names):
            codes.setdefault(start + k, name)

    def vocab(self, kind: str) -> list[str]:
        codes = self._data.vocab.get(kind, {})
        return [codes[c] for c in sorted(codes)]

    # -- item aggregates --
    def save_item_aggregates(self, stats: Mapping[str, Sequence[float]], trend: Mapping[str, Mapping[str, float]],
                             coengagement: Mapping[str, bytes], watermarks: Mapping[str, tuple[int, int]],
                             meta: Mapping[str, str]) -> None:
        rows = {k: list(v) for k, v in stats.items()}
        scores = {r: dict(s) for r, s in trend.items()}
        coeng, marks, values = dict(coengagement), dict(watermarks), dict(meta)
        data = self._data
        data.stats.update(rows)
        for region, s in scores.items():
            data.trend.setdefault(region, {}).update(s)
        data.coeng.update(coeng)
        data.watermarks.update(marks)
        data.meta.update(values)

    def iter_item_stats(self) -> Iterator[tuple[str, list[float]]]:
        for item_id, row in list(self._data.stats.items()):
            yield item_id, list(row)

    def iter_trend(self, region: str) -> Iterator[tuple[str, float]]:
        yield from list(self._data.trend.get(region, {}).items())

    def item_watermarks(self) -> dict[str, tuple[int, int]]:
        return {r: self._data.watermarks.get(r, (0, 0)) for r in self.regions}

    def get_meta(self, key: str) -> str | None:
        return self._data.meta.get(key)

    def iter_coengagement(self) -> Iterator[tuple[str, bytes]]:
        yield from list(self._data.coeng.items())

    def legacy_coengagement(self, limit: int) -> Iterator[tuple[str, str, float]]:
        return iter(())  # this backend never saved pairs

    def drop_legacy_coengagement(self) -> None:
        pass

    # -- users --
    def get_user(self, region: str, user_id: str) -> UserRecord | None:
        return self.get_users(region, [user_id]).get(user_id)

    def get_users(self, region: str, user_ids: Sequence[str]) -> dict[str, UserRecord]:
        r = self._r(region)
        return {u: replace(r.users[u], version=r.versions[u], last_event=r.last_events.get(u, 0))
                for u in user_ids if u in r.users}

    def put_user(self, user: UserRecord) -> None:
        r = self._r(user.region)
        r.users[user.id] = replace(user, version=0, last_event=0)
        r.versions[user.id] = r.versions.get(user.id, 0) + 1

    def user_versions(self, region: str, user_ids: Sequence[str]) -> dict[str, int]:
        versions = self._r(region).versions
        return {u: versions[u] for u in user_ids if u in versions}

    def find_user_region(self, user_id: str) -> str | None:
        return self.find_user_regions([user_id]).get(user_id)

    def find_user_regions(self, user_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for region in self.regions:
            users = self._r(region).users
            out.update({u: region for u in user_ids if u in users and u not in out})
        return out

    def iter_user_ids(self, region: str) -> Iterator[str]:
        yield from list(self._r(region).users)

    # -- events --
    def known_event_ids(self, region: str, events: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        keys = self._r(region).event_keys
        return {(u, i) for u, i in events if event_key(self._id_key, region, u, i) in keys}

    def _append(self, region: str, events: EventColumns, new_users: Sequence[UserRecord],
                accepted_at: float | None, drop_known: bool) -> Appended:
        r = self._r(region)
        accepted = time.time() if accepted_at is None else accepted_at
        keys = event_keys(self._id_key, region, events.user, events.id)
        kept = first_new(keys, {k for k in keys if k in r.event_keys})
        if kept is not None:
            if not drop_known:
                raise Conflict("an event id of this batch is already recorded for its user", field="id")
            events, keys = events.take(kept), [keys[n] for n in kept]
        if not len(events) and drop_known:
            return Appended(0, [])
        users = dict.fromkeys(events.user)
        for user in new_users:
            if (user.id in users or not drop_known) and user.id not in r.users:
                r.users[user.id], r.versions[user.id] = replace(user, version=0, last_event=0), 0
        first = r.last_event + 1
        r.last_events.update(zip(events.user, range(first, first + len(events)), strict=True))
        for user_id in users:
            if user_id in r.versions:
                r.versions[user_id] += 1
        for seq, e in enumerate(events.records(first), first):
            r.events[seq] = e
        r.event_seqs.extend(range(first, first + len(events)))
        r.last_event += len(events)
        r.event_keys.update(dict.fromkeys((k for k in keys if k is not None), accepted))
        return Appended(first, range(len(keys)) if kept is None else kept)

    def events_after(self, region: str, seq: int, limit: int | None = None) -> Iterator[EventRecord]:
        r = self._r(region)
        start = bisect.bisect_right(r.event_seqs, seq)
        end = len(r.event_seqs) if limit is None else start + max(limit, 0)
        yield from [replace(r.events[s]) for s in r.event_seqs[start:end]]

    def user_events(self, region: str, user_id: str, after: int = 0) -> list[EventRecord]:
        return [replace(e) for s, e in self._r(region).events.items() if e.user == user_id and s > after]

    def delete_events(self, region: str, before_ts: float, through_seq: int) -> int:
        events = self._r(region).events
        newest = max(events, default=0)
        gone = [s for s, e in events.items() if e.ts < before_ts and s <= through_seq and s < newest]
        self._delete_events(self._r(region), gone)
        return len(gone)

    @staticmethod
    def _delete_events(r: _Region, seqs: Sequence[int]) -> None:
        for s in seqs:
            del r.events[s]
        if seqs:
            r.event_seqs = list(r.events)

    def forget_event_ids(self, before_ts: float) -> int:
        removed = 0
        for region in self.regions:
            keys = self._r(region).event_keys
            old = [k for k, accepted in keys.items() if accepted < before_ts]
            for k in old:
                del keys[k]
            removed += len(old)
        return removed

    # -- served --
    def record_served(self, region: str, rows: Sequence[ServedRecord],
                      expect: Mapping[str, int] | None = None) -> list[int]:
        r, batch = self._r(region), list(rows)
        moved = [u for u, v in (expect or {}).items() if r.versions.get(u, 0) != v]
        if moved:
            raise Stale(f"user {moved[0]!r} was changed by another server since this one read them", "user")
        for user_id in dict.fromkeys(row.user for row in batch):
            if user_id in r.versions:
                r.versions[user_id] += 1
        first = r.last_served + 1
        for n, row in enumerate(batch):
            r.served[first + n] = ServedRecord(row.user, row.item, row.request_id, row.ts, first + n, row.variant)
        r.last_served += len(batch)
        return list(range(first, first + len(batch)))

    def served_after(self, region: str, seq: int) -> Iterator[ServedRecord]:
        yield from [replace(row) for s, row in self._r(region).served.items() if s > seq]

    def recent_served(self, region: str, user_id: str, limit: int) -> list[str]:
        mine = [row.item for row in self._r(region).served.values() if row.user == user_id]
        return mine[::-1][:limit]

    def user_served(self, region: str, user_id: str, after: int = 0) -> list[ServedRecord]:
        return [replace(row) for s, row in self._r(region).served.items() if row.user == user_id and s > after]

    def excluded_items(self, region: str, user_id: str) -> set[str]:
        r = self._r(region)
        out = {row.item for row in r.served.values() if row.user == user_id}
        out.update(e.item for e in r.events.values() if e.user == user_id and e.type == "view")
        return out

    # -- user controls --
    def put_controls(self, region: str, user_id: str, controls: bytes) -> None:
        r = self._r(region)
        r.controls[user_id] = bytes(controls)
        if user_id in r.versions:
            r.versions[user_id] += 1

    def get_controls(self, region: str, user_id: str) -> bytes | None:
        return self._r(region).controls.get(user_id)

    # -- interest state --
    def save_user_states(self, region: str, states: Mapping[str, bytes], watermark: int) -> None:
        r, saved = self._r(region), dict(states)
        r.states.update(saved)
        r.state_mark = watermark

    def load_user_state(self, region: str, user_id: str) -> bytes | None:
        return self._r(region).states.get(user_id)

    def load_user_states(self, region: str, user_ids: Sequence[str]) -> dict[str, bytes]:
        states = self._r(region).states
        return {u: states[u] for u in user_ids if u in states}

    def user_state_watermark(self, region: str) -> int:
        return self._r(region).state_mark

    # -- erasure --
    def erase_user(self, region: str, user_id: str, event_ids: Sequence[str]) -> dict[str, int]:
        r = self._r(region)
        events = [s for s, e in r.events.items() if e.user == user_id]
        served = [s for s, row in r.served.items() if row.user == user_id]
        keys = [k for k in (event_key(self._id_key, region, user_id, i) for i in event_ids) if k in r.event_keys]
        self._delete_events(r, events)
        for s in served:
            del r.served[s]
        for k in keys:
            del r.event_keys[k]
        r.versions.pop(user_id, None)
        r.last_events.pop(user_id, None)
        return {"profile": int(r.users.pop(user_id, None) is not None), "events": len(events), "served": len(served),
                "interest_state": int(r.states.pop(user_id, None) is not None),
                "controls": int(r.controls.pop(user_id, None) is not None),
                "model_rows": self._drop_rows(r, user_id), "event_ids": len(keys)}

    @staticmethod
    def _drop_rows(r: _Region, user_id: str) -> int:
        """The user's rows of every model table of the region (their embedding row, refresh marks)."""
        mine = [k for k in r.model_rows if k[1] == user_id]
        for k in mine:
            del r.model_rows[k]
            r.model_vers.pop(k, None)
        return len(mine)

    def save_tombstone(self, subject: str, until: float) -> None:
        self._data.tombstones[subject] = until

    def iter_tombstones(self) -> Iterator[tuple[str, float]]:
        yield from list(self._data.tombstones.items())

    # -- learned models --
    def _rows(self, region: str | None) -> dict[tuple[str, str], bytes]:
        return self._data.model_rows if region is None else self._r(region).model_rows

    def _vers(self, region: str | None) -> dict[tuple[str, str], int]:
        return self._data.model_vers if region is None else self._r(region).model_vers

    def save_model_rows(self, region: str | None, table: str, rows: Sequence[tuple[str, bytes]],
                        removed: Sequence[str], version: int = 0, guard: str | None = None) -> list[str]:
        put, gone, held, vers = list(rows), list(removed), self._rows(region), self._vers(region)
        left_out: list[str] = []
        if guard is not None and region is not None:
            users = self._r(region).users
            left_out = [k for k, _ in put if k not in users or (guard, k) in held]
            put = [(k, v) for k, v in put if k in users and (guard, k) not in held]
        held.update({(table, k): bytes(v) for k, v in put})
        vers.update({(table, k): version for k, _ in put})
        for k in gone:
            held.pop((table, k), None)
            vers.pop((table, k), None)
        return left_out

    def iter_model_rows(self, region: str | None, table: str) -> Iterator[tuple[str, bytes]]:
        yield from [(k, v) for (t, k), v in self._rows(region).items() if t == table]

    def get_model_rows(self, region: str | None, table: str, keys: Sequence[str]) -> dict[str, bytes]:
        held = self._rows(region)
        return {k: held[(table, k)] for k in keys if (table, k) in held}

    def model_rows_after(self, region: str | None, table: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        return sorted((k, v) for (t, k), v in self._rows(region).items() if t == table and k > after)[:limit]

    def delete_model_rows_if(self, region: str | None, table: str, rows: Sequence[tuple[str, bytes]]) -> int:
        held, vers, gone = self._rows(region), self._vers(region), 0
        for k, v in list(rows):
            if held.get((table, k)) == bytes(v):
                del held[(table, k)]
                vers.pop((table, k), None)
                gone += 1
        return gone

    def model_rows_since(self, region: str | None, table: str, after: int, through: int) -> list[tuple[str, bytes]]:
        held = self._rows(region)
        return [(k, held[(t, k)]) for (t, k), v in list(self._vers(region).items())
                if t == table and after < v <= through]

    def clear_model_rows(self, region: str | None, table: str) -> None:
        held, vers = self._rows(region), self._vers(region)
        for key in [k for k in held if k[0] == table]:
            del held[key]
            vers.pop(key, None)

    def append_model_delta(self, version: int, blob: bytes) -> None:
        self._data.deltas[version] = bytes(blob)

    def model_deltas(self, after: int) -> list[tuple[int, bytes]]:
        return sorted((v, b) for v, b in list(self._data.deltas.items()) if v > after)

    def keep_model_deltas(self, after: int, through: int) -> None:
        self._data.deltas = {v: b for v, b in self._data.deltas.items() if after < v <= through}

    def save_model_blob(self, key: str, value: bytes) -> None:
        self._data.blobs[key] = bytes(value)

    def get_model_blob(self, key: str) -> bytes | None:
        return self._data.blobs.get(key)

    def delete_model_blobs(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._data.blobs.pop(key, None)

    def drop_model(self) -> None:
        for region in self.regions:
            self._r(region).model_rows.clear()
            self._r(region).model_vers.clear()
        self._data.model_rows.clear()
        self._data.model_vers.clear()
        self._data.blobs.clear()
        self._data.deltas.clear()

    def close(self) -> None:
        """Nothing to release: the data stays in the process for the next open of the same name."""
