"""The embedded default: SQLite in WAL mode, one file for the shared catalogue and one per region.

`synchronous=NORMAL` in WAL mode means a committed transaction survives a kill of the process (the
WAL is in the OS's hands); only a power loss can lose the last commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import groupby, repeat
from pathlib import Path

import orjson

from foryou.columns import EventColumns
from foryou.datadir import private_dir, private_file
from foryou.errors import Conflict, Stale
from foryou.store import log_index
from foryou.store.base import (
    Appended,
    EventAppends,
    event_key,
    event_key_secret,
    event_keys,
    first_catalogue_version,
    first_new,
)
from foryou.store.sqlite_models import ModelTables
from foryou.store.sqlite_schema import (
    CATALOG_SCHEMA,
    MODEL_SCHEMA,
    REGION_MODEL_SCHEMA,
    REGION_SCHEMA,
    chunks,
    connect,
    marks,
    move_model_tables,
    next_seq,
    tx,
)
from foryou.store.wal import WalFolder
from foryou.types import STAT_NAMES, EventRecord, ItemRecord, ServedRecord, UserRecord

_EVENT_TYPES = ("view", "like", "comment", "share", "follow", "not_interested", "report")
_TYPE_CODE = {t: i for i, t in enumerate(_EVENT_TYPES)}


def _item_row(i: ItemRecord) -> tuple[object, ...]:
    return (
        i.id, i.creator, i.duration_s, i.created_at, i.caption, orjson.dumps(list(i.tags)).decode(),
        i.topic, i.sound, i.lang, None if i.regions is None else ",".join(i.regions), int(i.mature),
        int(i.down),
    )


def _item(row: tuple) -> ItemRecord:  # type: ignore[type-arg]
    return ItemRecord(
        id=row[0], creator=row[1], duration_s=row[2], created_at=row[3], caption=row[4],
        tags=tuple(orjson.loads(row[5])), topic=row[6], sound=row[7], lang=row[8],
        regions=None if row[9] is None else tuple(r for r in row[9].split(",") if r),
        mature=bool(row[10]), down=bool(row[11]),
    )


_ITEM_COLS = "id, creator, duration_s, created_at, caption, tags, topic, sound, lang, regions, mature, down"


class SQLiteStore(ModelTables, EventAppends):
    """`Store` on SQLite files in `directory`: `catalog.db`, `model.db` (the trainer's, but users' rows),
    and per region `region-<code>.db` (its users and log), `-index.db` (the log's look-ups) and
    `-model.db` (its users' model rows)."""

    def __init__(self, directory: str | Path, regions: Sequence[str], secret: bytes = b"", fold: bool = True):
        self.directory = Path(directory)
        self.regions = tuple(regions)
        self._id_key = event_key_secret(secret)  # `secret`: the privacy secret
        self._closed = False
        private_dir(self.directory)
        # Readable by the server's user only. SQLite gives the -wal and -shm files the database's mode
        # when it creates them, so the database is made first (files of earlier versions are narrowed).
        names = ["catalog.db", "model.db",
                 *(f"region-{r}{part}.db" for part in ("", "-index", "-model") for r in self.regions)]
        for name in names:
            private_file(self.directory / name)
            for extra in (f"{name}-wal", f"{name}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / extra).chmod(0o600)
        # A second handle (a writer thread's, a trainer's) keeps a smaller page cache: each connection's
        # fills to its bound over a long run (six of 64 MiB were +384 MiB in a soak), and the operating
        # system's page cache already holds the same pages once.
        cache = 64 if fold else 16
        self._catalog = connect(self.directory / "catalog.db", CATALOG_SCHEMA, cache)
        self._region = {r: connect(self.directory / f"region-{r}.db", REGION_SCHEMA, cache) for r in self.regions}
        self._region_models = {r: connect(self.directory / f"region-{r}-model.db", REGION_MODEL_SCHEMA, cache)
                               for r in self.regions}
        for conn in (*self._region.values(), *self._region_models.values()):  # deleted user data is
            conn.execute("PRAGMA secure_delete=ON")  # overwritten, not left in free pages
        self._models = connect(self.directory / "model.db", MODEL_SCHEMA, cache)
        if fold:
            move_model_tables(self._models, self.directory / "catalog.db")
            for r in self.regions:
                move_model_tables(self._region_models[r], self.directory / f"region-{r}.db")
        # The log's look-ups by key and by user (log_index.py): one handle per process merges them
        # (the others read); data directories of earlier versions are converted first.
        self._lookups = {r: log_index.Lookups(self.directory / f"region-{r}-index.db",
                                              self.directory / f"region-{r}.db", self._region[r], merges=fold)
                         for r in self.regions}
        if fold:
            for lookups in self._lookups.values():
                lookups.adopt_old()
                lookups.merge(None)
        self._folder = WalFolder([self.directory / name for name in names],
                                 [lookups.merge for lookups in self._lookups.values()] if fold else [])
        if fold:
            self._folder.start()

    def merge_log(self, region: str) -> None:
        """Merge the region's log into its look-ups now (the upkeep thread does it on its own)."""
        self._lookups[region].merge(None)

    # -- catalogue --
    def upsert_items(self, items: Sequence[ItemRecord]) -> None:
        with tx(self._catalog) as c:
            row = c.execute("SELECT value FROM meta WHERE key='catalogue_version'").fetchone()
            version = int(row[0]) + 1 if row else first_catalogue_version()
            c.executemany(
                f"INSERT INTO items ({_ITEM_COLS}, ver) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET "
                "creator=excluded.creator, duration_s=excluded.duration_s, created_at=excluded.created_at, "
                "caption=excluded.caption, tags=excluded.tags, topic=excluded.topic, sound=excluded.sound, "
                "lang=excluded.lang, regions=excluded.regions, mature=excluded.mature, down=excluded.down, "
                "ver=excluded.ver",
                [(*_item_row(i), version) for i in items],
            )
            c.execute("INSERT OR REPLACE INTO meta VALUES ('catalogue_version', ?)", (str(version),))

    def get_item(self, item_id: str) -> ItemRecord | None:
        row = self._catalog.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id=?", (item_id,)).fetchone()
        return None if row is None else _item(row)

    def iter_items(self) -> Iterator[ItemRecord]:
        for row in self._catalog.execute(f"SELECT {_ITEM_COLS} FROM items ORDER BY seq"):
            yield _item(row)

    def catalogue_version(self) -> int:
        found = self.get_meta("catalogue_version")
        return 0 if found is None else int(found)

    def items_since(self, version: int) -> list[ItemRecord]:
        q = f"SELECT {_ITEM_COLS} FROM items WHERE ver>? ORDER BY seq"
        return [_item(row) for row in self._catalog.execute(q, (version,))]

    def save_vocab(self, kind: str, start: int, names: Sequence[str]) -> None:
        with tx(self._catalog) as c:
            c.executemany("INSERT OR IGNORE INTO vocab VALUES (?,?,?)",
                          [(kind, start + k, name) for k, name in enumerate(names)])

    def vocab(self, kind: str) -> list[str]:
        return [r[0] for r in self._catalog.execute("SELECT name FROM vocab WHERE kind=? ORDER BY code", (kind,))]

    # -- item aggregates --
    def save_item_aggregates(
        self,
        stats: Mapping[str, Sequence[float]],
        trend: Mapping[str, Mapping[str, float]],
        coengagement: Mapping[str, bytes],
        watermarks: Mapping[str, tuple[int, int]],
        meta: Mapping[str, str],
    ) -> None:
        places = ",".join("?" * (len(STAT_NAMES) + 4))
        with tx(self._catalog) as c:
            c.executemany(f"INSERT OR REPLACE INTO item_stats VALUES ({places})",
                          [(k, *v) for k, v in stats.items()])
            for region, scores in trend.items():
                c.executemany("INSERT OR REPLACE INTO trend VALUES (?,?,?)",
                              [(region, k, s) for k, s in scores.items()])
            c.executemany("INSERT OR REPLACE INTO coeng_rows VALUES (?,?)", list(coengagement.items()))
            c.executemany("INSERT OR REPLACE INTO watermarks VALUES (?,?,?)",
                          [(r, e, s) for r, (e, s) in watermarks.items()])
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", list(meta.items()))

    def iter_item_stats(self) -> Iterator[tuple[str, list[float]]]:
        for row in self._catalog.execute("SELECT * FROM item_stats"):
            yield row[0], list(row[1:])

    def iter_trend(self, region: str) -> Iterator[tuple[str, float]]:
        yield from self._catalog.execute("SELECT id, score FROM trend WHERE region=?", (region,))

    def item_watermarks(self) -> dict[str, tuple[int, int]]:
        marks = {r: (0, 0) for r in self.regions}
        for region, events, served in self._catalog.execute("SELECT * FROM watermarks"):
            marks[region] = (events, served)
        return marks

    def get_meta(self, key: str) -> str | None:
        row = self._catalog.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def iter_coengagement(self) -> Iterator[tuple[str, bytes]]:
        for item_id, row in self._catalog.execute("SELECT id, row FROM coeng_rows"):
            yield item_id, bytes(row)

    def legacy_coengagement(self, limit: int) -> Iterator[tuple[str, str, float]]:
        if self._catalog.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='coeng'").fetchone():
            # In key order, each item's pairs together, the strongest kept here: a window function
            # sorted all 18M pairs of a 5M-event log in memory.
            rows = self._catalog.execute("SELECT a, b, w FROM coeng")
            for _, group in groupby(rows, key=lambda abw: abw[0]):
                yield from heapq.nsmallest(limit, group, key=lambda abw: (-abw[2], abw[1]))

    def drop_legacy_coengagement(self) -> None:
        with tx(self._catalog) as c:
            c.execute("DROP TABLE IF EXISTS coeng")

    # -- users --
    def get_user(self, region: str, user_id: str) -> UserRecord | None:
        return self.get_users(region, [user_id]).get(user_id)

    def get_users(self, region: str, user_ids: Sequence[str]) -> dict[str, UserRecord]:
        out: dict[str, UserRecord] = {}
        for chunk in chunks(user_ids):
            q = ("SELECT id, interests, lang, age_band, created_at, personalized, v, last_event FROM users "
                 f"WHERE id IN ({marks(chunk)})")
            for user_id, interests, lang, age_band, created_at, personal, v, last in self._region[region].execute(
                    q, chunk):
                out[user_id] = UserRecord(user_id, region, tuple(orjson.loads(interests)), lang, age_band, created_at,
                                          bool(personal), v, last)
        return out

    def put_user(self, user: UserRecord) -> None:
        with tx(self._region[user.region]) as c:
            c.execute(f"{_INSERT_USER} ON CONFLICT (id) DO UPDATE SET interests=excluded.interests, "
                      "lang=excluded.lang, age_band=excluded.age_band, created_at=excluded.created_at, "
                      "personalized=excluded.personalized, v=v+1", (*_user_row(user), 1))

    def user_versions(self, region: str, user_ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in chunks(user_ids):
            out.update(self._region[region].execute(f"SELECT id, v FROM users WHERE id IN ({marks(chunk)})", chunk))
        return out

    def find_user_region(self, user_id: str) -> str | None:
        return self.find_user_regions([user_id]).get(user_id)

    def find_user_regions(self, user_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for region, conn in self._region.items():
            missing = [u for u in dict.fromkeys(user_ids) if u not in out]
            for chunk in chunks(missing):
                for (user_id,) in conn.execute(f"SELECT id FROM users WHERE id IN ({marks(chunk)})", chunk):
                    out[user_id] = region
        return out

    def iter_user_ids(self, region: str) -> Iterator[str]:
        for (user_id,) in self._region[region].execute("SELECT id FROM users"):
            yield user_id

    # -- events --
    def known_event_ids(self, region: str, events: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        by_key = {self._key(region, user, event_id): (user, event_id) for user, event_id in events}
        return {by_key[k] for k in self._lookups[region].known(list(by_key))}

    def _key(self, region: str, user: str, event_id: str) -> int:
        return event_key(self._id_key, region, user, event_id)

    def _append(self, region: str, events: EventColumns, new_users: Sequence[UserRecord],
                accepted_at: float | None, drop_known: bool) -> Appended:
        accepted = time.time() if accepted_at is None else accepted_at
        keys = event_keys(self._id_key, region, events.user, events.id)
        with tx(self._region[region]) as c:
            # checked in the transaction: no append between
            kept = first_new(keys, self._lookups[region].known([k for k in keys if k is not None]))
            if kept is not None:
                if not drop_known:
                    raise Conflict("an event id of this batch is already recorded for its user", field="id")
                events, keys = events.take(kept), [keys[n] for n in kept]
            n = len(events)
            if not n and drop_known:
                return Appended(0, [])
            users = dict.fromkeys(events.user)
            c.executemany(f"{_INSERT_USER} ON CONFLICT (id) DO NOTHING",
                          [(*_user_row(u), 0) for u in new_users if u.id in users or not drop_known])
            first = next_seq(c, "events", n)
            last = dict(zip(events.user, range(first, first + n), strict=True))  # each user's newest
            c.executemany("UPDATE users SET v=v+1, last_event=? WHERE id=?", [(s, u) for u, s in last.items()])
            c.executemany(
                "INSERT INTO events (seq, user, item, type, watch_s, ts, id, request_id, k, accepted) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                zip(range(first, first + n), events.user, events.item, map(_TYPE_CODE.__getitem__, events.type),
                    events.watch_s.tolist(), events.ts.tolist(), events.id, events.request_id, keys,
                    repeat(accepted, n), strict=True))
        self._lookups[region].tail.add_many(first, events.user, keys, accepted)
        return Appended(first, range(len(keys)) if kept is None else kept)

    def events_after(self, region: str, seq: int, limit: int | None = None) -> Iterator[EventRecord]:
        q = ("SELECT seq, user, item, type, watch_s, ts, id, request_id FROM events WHERE seq>? ORDER BY seq"
             " LIMIT ?")
        for row in self._region[region].execute(q, (seq, -1 if limit is None else limit)):
            yield _event(row)

    def user_events(self, region: str, user_id: str, after: int = 0) -> list[EventRecord]:
        seqs = [s for s in self._lookups[region].user_seqs(user_id) if s > after]
        return [_event(r) for r in self._events_at(region, seqs)]

    def _events_at(self, region: str, seqs: Sequence[int], views: bool = False) -> list[tuple]:  # type: ignore[type-arg]
        out: list[tuple] = []  # type: ignore[type-arg]
        for chunk in chunks(seqs):
            q = (f"SELECT seq, user, item, type, watch_s, ts, id, request_id FROM events WHERE seq IN ({marks(chunk)})"
                 + (" AND type=0" if views else "") + " ORDER BY seq")
            out.extend(self._region[region].execute(q, chunk))
        return out

    def delete_events(self, region: str, before_ts: float, through_seq: int) -> int:
        with tx(self._region[region]) as c:
            q = "DELETE FROM events WHERE ts<? AND seq<=? AND seq<(SELECT max(seq) FROM events) RETURNING seq"
            seqs = [r[0] for r in c.execute(q, (before_ts, through_seq))]
        self._lookups[region].drop_seqs(seqs)
        return len(seqs)

    def forget_event_ids(self, before_ts: float) -> int:
        return sum(lookups.forget_before(before_ts) for lookups in self._lookups.values())

    # -- served --
    def record_served(self, region: str, rows: Sequence[ServedRecord],
                      expect: Mapping[str, int] | None = None) -> list[int]:
        with tx(self._region[region]) as c:
            if expect:
                ids = list(expect)
                found = dict(c.execute(f"SELECT id, v FROM users WHERE id IN ({marks(ids)})", ids))
                moved = [u for u, v in expect.items() if found.get(u, 0) != v]
                if moved:
                    raise Stale(f"user {moved[0]!r} was changed by another server since this one read them", "user")
            c.executemany("UPDATE users SET v=v+1 WHERE id=?", [(u,) for u in dict.fromkeys(r.user for r in rows)])
            first = next_seq(c, "served", len(rows))
            c.executemany("INSERT INTO served (seq, user, item, request_id, ts, variant) VALUES (?,?,?,?,?,?)",
                          [(first + n, r.user, r.item, r.request_id, r.ts, r.variant) for n, r in enumerate(rows)])
        return list(range(first, first + len(rows)))

    def served_after(self, region: str, seq: int) -> Iterator[ServedRecord]:
        q = "SELECT seq, user, item, request_id, ts, variant FROM served WHERE seq>? ORDER BY seq"
        for s, user, item, request_id, ts, variant in self._region[region].execute(q, (seq,)):
            yield ServedRecord(user, item, request_id, ts, s, variant)

    def recent_served(self, region: str, user_id: str, limit: int) -> list[str]:
        q = "SELECT item FROM served WHERE user=? ORDER BY seq DESC LIMIT ?"
        return [str(r[0]) for r in self._region[region].execute(q, (user_id, limit))]

    def user_served(self, region: str, user_id: str, after: int = 0) -> list[ServedRecord]:
        q = "SELECT seq, user, item, request_id, ts, variant FROM served WHERE user=? AND seq>? ORDER BY seq"
        return [ServedRecord(u, i, r, ts, s, v)
                for s, u, i, r, ts, v in self._region[region].execute(q, (user_id, after))]

    def excluded_items(self, region: str, user_id: str) -> set[str]:
        conn = self._region[region]
        out = {r[0] for r in conn.execute("SELECT item FROM served WHERE user=?", (user_id,))}
        out.update(r[2] for r in self._events_at(region, self._lookups[region].user_seqs(user_id), views=True))
        return out

    def put_controls(self, region: str, user_id: str, controls: bytes) -> None:
        with tx(self._region[region]) as c:
            c.execute("INSERT OR REPLACE INTO user_controls VALUES (?,?)", (user_id, controls))
            c.execute("UPDATE users SET v=v+1 WHERE id=?", (user_id,))

    def get_controls(self, region: str, user_id: str) -> bytes | None:
        row = self._region[region].execute("SELECT controls FROM user_controls WHERE user=?", (user_id,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- interest state --
    def save_user_states(self, region: str, states: Mapping[str, bytes], watermark: int) -> None:
        with tx(self._region[region]) as c:
            c.executemany("INSERT OR REPLACE INTO user_state VALUES (?,?)", list(states.items()))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('state_watermark', ?)", (str(watermark),))

    def load_user_state(self, region: str, user_id: str) -> bytes | None:
        row = self._region[region].execute("SELECT state FROM user_state WHERE user=?", (user_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def load_user_states(self, region: str, user_ids: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for chunk in chunks(user_ids):
            q = f"SELECT user, state FROM user_state WHERE user IN ({marks(chunk)})"
            out.update((u, bytes(s)) for u, s in self._region[region].execute(q, chunk))
        return out

    def user_state_watermark(self, region: str) -> int:
        row = self._region[region].execute("SELECT value FROM meta WHERE key='state_watermark'").fetchone()
        return 0 if row is None else int(row[0])

    # -- erasure --
    def erase_user(self, region: str, user_id: str, event_ids: Sequence[str]) -> dict[str, int]:
        conn, lookups = self._region[region], self._lookups[region]
        counts: dict[str, int] = {}
        with lookups.lock:  # no merge between finding the user's rows and deleting them
            seqs = self._lookups[region].user_seqs(user_id)
            with tx(conn) as c:  # the log first: a look-up row left by a crash here is found again
                for kind, query in (("profile", "DELETE FROM users WHERE id=?"),
                                    ("served", "DELETE FROM served WHERE user=?"),
                                    ("interest_state", "DELETE FROM user_state WHERE user=?"),
                                    ("controls", "DELETE FROM user_controls WHERE user=?")):
                    counts[kind] = c.execute(query, (user_id,)).rowcount
                counts["events"] = sum(c.execute(f"DELETE FROM events WHERE seq IN ({marks(chunk)})", chunk).rowcount
                                       for chunk in chunks(seqs))
            # After the profile: a trainer's write of the user's row, which checks the profile in its
            # transaction on this file, either came first (and is deleted here) or leaves the row out.
            with tx(self._region_models[region]) as c:
                counts["model_rows"] = c.execute("DELETE FROM model_rows WHERE key=?", (user_id,)).rowcount
            # the keys of this version, and the unkeyed ones of earlier versions (until they expire)
            keys = [h for i in event_ids for h in (self._key(region, user_id, i), _legacy_key(i))]
            counts["event_ids"] = lookups.erase(user_id, keys)
        # Splitting and merging index pages leaves stale copies of keys in free space within pages,
        # which secure_delete does not reach: rebuild the indexes keyed by user (~1.7 s per million
        # events, benchmarks/erasure.py).
        for db, reindex, path in ((conn, "served_user", self.directory / f"region-{region}.db"),
                                  (lookups.conn, "event_users_user", self.directory / f"region-{region}-index.db"),
                                  (self._region_models[region], "", self.directory / f"region-{region}-model.db")):
            with self._folder.locks[path]:
                if reindex:
                    db.execute(f"REINDEX {reindex}")
                # The WAL held the deleted pages' old images: it must be emptied, not merely folded.
                for _ in range(50):
                    busy = db.execute("PRAGMA main.wal_checkpoint(TRUNCATE)").fetchone()[0]
                    if not busy:
                        break
                    time.sleep(0.01)
                else:
                    raise sqlite3.OperationalError("the write-ahead log could not be truncated after an erasure")
        return counts

    def save_tombstone(self, subject: str, until: float) -> None:
        with tx(self._catalog) as c:
            c.execute("INSERT OR REPLACE INTO tombstones VALUES (?,?)", (subject, until))

    def iter_tombstones(self) -> Iterator[tuple[str, float]]:
        yield from self._catalog.execute("SELECT subject, until FROM tombstones")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._folder.stop.set()
        if self._folder.is_alive():
            self._folder.join()
        for lookups in self._lookups.values():
            lookups.close()
        for conn in (self._catalog, self._models, *self._region.values(), *self._region_models.values()):
            conn.close()


def _legacy_key(event_id: str) -> int:
    """An idempotency key as versions before the keyed hash stored it (unkeyed, global)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


_INSERT_USER = "INSERT INTO users (id, interests, lang, age_band, created_at, personalized, v) VALUES (?,?,?,?,?,?,?)"


def _user_row(u: UserRecord) -> tuple[object, ...]:
    return (u.id, orjson.dumps(list(u.interests)).decode(), u.lang, u.age_band, u.created_at, int(u.personalized))


def _event(row: tuple) -> EventRecord:  # type: ignore[type-arg]
    seq, user, item, type_code, watch_s, ts, event_id, request_id = row
    return EventRecord(user, item, _EVENT_TYPES[type_code], watch_s, ts, event_id, request_id, seq)
