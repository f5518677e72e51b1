"""The storage contract. Every backend (SQLite, the embedded default; memory, for tests; Redis for
scale-out later) implements `Store` and passes the one conformance suite in tests/contracts/. `Store`
is made of parts by owner (catalogue, item aggregates, profiles, event log, models, erasure), each
naming its one writer.

Layout of data: the catalogue, item counters, trending scores and co-engagement are shared (item-level
aggregates only); everything about a user (profile, events, served set, interest state) lives in the
store of that user's region. Events and served rows are the durable source of truth, written before
a request is acknowledged; the derived state is checkpointed with a per-region watermark (the last
sequence number it includes), and on start the engine replays only what came after it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from foryou.columns import EventColumns
from foryou.types import EventRecord, ItemRecord, ServedRecord, UserRecord


class Catalogue(Protocol):
    """The items (shared by all regions). Writer: the item service (upserts and takedowns)."""

    def upsert_items(self, items: Sequence[ItemRecord]) -> None:
        """Insert or replace items by id, atomically; `down` is stored as given."""

    def get_item(self, item_id: str) -> ItemRecord | None:
        """The item as last upserted (taken down or not); None for an id never upserted."""

    def iter_items(self) -> Iterator[ItemRecord]:
        """Every item, in insertion order."""

    def catalogue_version(self) -> int:
        """A number that every `upsert_items` raises, atomically with it: 0 before the first, then from
        a random start, so that equal numbers mean the same catalogue of the same store and a snapshot
        taken at one is still good."""

    def items_since(self, version: int) -> list[ItemRecord]:
        """The items upserted (or taken down, or restored) since the catalogue was at `version`, as
        they are now, in insertion order: how another process (the trainer) follows the catalogue."""

    def save_vocab(self, kind: str, start: int, names: Sequence[str]) -> None:
        """Record that `names` have the codes `start`, `start + 1`, ... in vocabulary `kind` ("tags",
        "creators", "sounds"), atomically. A code keeps its first name: vocabularies only grow, so that
        users' saved states, which hold codes, read the same in every process and after every restart.
        Writer: the users' state checkpoint, before it saves states that use the codes."""

    def vocab(self, kind: str) -> list[str]:
        """The names of vocabulary `kind`, by code (codes are dense from 0)."""


class ItemAggregates(Protocol):
    """Item counters, trending scores and co-engagement (shared: item-level only), with the per-region
    watermark of the log they include. Writer: the live state's checkpoint, of what the log follower
    (`foryou/follower.py`) applied."""

    def save_item_aggregates(
        self,
        stats: Mapping[str, Sequence[float]],
        trend: Mapping[str, Mapping[str, float]],
        coengagement: Mapping[str, bytes],
        watermarks: Mapping[str, tuple[int, int]],
        meta: Mapping[str, str],
    ) -> None:
        """Atomically: overwrite the given items' counters, per-region trend scores and co-engagement
        rows (opaque here: the live state's encoding), and set each region's (event seq, served seq)
        watermark and meta keys."""

    def iter_item_stats(self) -> Iterator[tuple[str, list[float]]]:
        """(item id, counters as last saved) for every item with saved counters."""

    def iter_trend(self, region: str) -> Iterator[tuple[str, float]]:
        """(item id, trend score as last saved) of the region."""

    def item_watermarks(self) -> dict[str, tuple[int, int]]:
        """Region -> (event seq, served seq) included in the saved aggregates; (0, 0) if none."""

    def get_meta(self, key: str) -> str | None:
        """A meta value saved with the aggregates (trending's time origin, the pools' reference)."""

    def iter_coengagement(self) -> Iterator[tuple[str, bytes]]:
        """(item id, co-engagement row as last saved) for every item with one."""

    def legacy_coengagement(self, limit: int) -> Iterator[tuple[str, str, float]]:
        """Co-engagement as versions before the rows saved it, (item, other item, count): for each
        item its `limit` strongest, grouped by item. Nothing once `drop_legacy_coengagement` ran."""

    def drop_legacy_coengagement(self) -> None:
        """Forget what `legacy_coengagement` reads (once its rows are saved as rows)."""


class Profiles(Protocol):
    """Per region: users' profiles, controls and saved interest state, under a per-user version. Writer:
    the serving role (the request about the user, and the checkpoint of what requests applied); any
    server may handle any user, so each write about a user raises the user's version by one, atomically
    with it, and a server that cached the user knows from the version whether another wrote since."""

    def get_user(self, region: str, user_id: str) -> UserRecord | None:
        """The profile, if the region holds the user (never another region's)."""

    def get_users(self, region: str, user_ids: Sequence[str]) -> dict[str, UserRecord]:
        """The profiles of those of `user_ids` that the region holds, each with its `version` and the
        seq of the user's newest event (`last_event`) as of the read."""

    def put_user(self, user: UserRecord) -> None:
        """Insert or replace the profile in the store of `user.region`, raising its version (a new
        user's is 1); the record's own `version` and `last_event` are ignored."""

    def user_versions(self, region: str, user_ids: Sequence[str]) -> dict[str, int]:
        """The versions of those of `user_ids` that the region holds: every write about a user (profile,
        events, served items, controls) raises it by one, so a server that knows the version its cached
        state reflects, and wrote once since, finds it one higher unless another server wrote too."""

    def find_user_region(self, user_id: str) -> str | None:
        """The region whose store holds this user, if any."""

    def find_user_regions(self, user_ids: Sequence[str]) -> dict[str, str]:
        """For those of `user_ids` some region holds: that region (one look-up per region)."""

    def iter_user_ids(self, region: str) -> Iterator[str]:
        """Every user id held in the region's store."""

    def put_controls(self, region: str, user_id: str, controls: bytes) -> None:
        """Store the user's serialized controls (keyword filters, topic weights), replacing any, and
        raise the user's version."""

    def get_controls(self, region: str, user_id: str) -> bytes | None:
        """The user's serialized controls as last put; None if never."""

    def save_user_states(self, region: str, states: Mapping[str, bytes], watermark: int) -> None:
        """Atomically store users' serialized interest state and the event seq it includes."""

    def load_user_state(self, region: str, user_id: str) -> bytes | None:
        """The user's serialized interest state as last saved; None if never."""

    def load_user_states(self, region: str, user_ids: Sequence[str]) -> dict[str, bytes]:
        """The saved states of those of `user_ids` that have one."""

    def user_state_watermark(self, region: str) -> int:
        """The event seq the region's saved interest states include (from the last save); 0 if none."""


class EventLog(Protocol):
    """Per region: the durable log of events and of served items, the source of truth every derived
    state is rebuilt from, and the events' idempotency keys. Writer: the serving role appends;
    retention deletes what is past its time."""

    def known_event_ids(self, region: str, events: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (user, event id) pairs the region already holds: an idempotency key belongs
        to one user of one region, so no other user, and no key of another region, can find or claim
        it. Stored only as a keyed hash (the privacy secret's), never readable."""

    def append_events(
        self, region: str, events: Sequence[EventRecord], new_users: Sequence[UserRecord],
        accepted_at: float | None = None,
    ) -> list[int]:
        """Durably and atomically append events (and create the new users); returns their seqs.
        Atomically with it each user of the batch gets its version raised by one and its `last_event`
        set. Their idempotency keys are remembered from `accepted_at` (default: the wall clock). A key
        the region already holds, or one repeated in the batch, is a `Conflict`, and nothing is appended."""

    def append_new_events(self, region: str, events: EventColumns, new_users: Sequence[UserRecord],
                          accepted_at: float | None = None) -> Appended:
        """`append_events` for the events of the batch whose idempotency key neither the region holds
        nor an earlier event of the batch has: those are dropped in the append's own transaction, so of
        two concurrent appends of one key exactly one takes it. Of `new_users` only those with an
        appended event are created. Returns the first seq and the positions appended."""

    def events_after(self, region: str, seq: int, limit: int | None = None) -> Iterator[EventRecord]:
        """The region's events with seq above `seq`, in seq order (at most `limit`)."""

    def user_events(self, region: str, user_id: str, after: int = 0) -> list[EventRecord]:
        """Every event of the user still in the region's log with seq above `after`, in seq order (for
        the user's own export; and what a saved state lacks)."""

    def delete_events(self, region: str, before_ts: float, through_seq: int) -> int:
        """Delete the region's events with `ts` before `before_ts` and seq at most `through_seq` (never
        the newest: sequence numbers must keep growing); returns how many."""

    def forget_event_ids(self, before_ts: float) -> int:
        """Drop idempotency keys accepted before `before_ts`; returns how many."""

    def record_served(self, region: str, rows: Sequence[ServedRecord],
                      expect: Mapping[str, int] | None = None) -> list[int]:
        """Durably and atomically record items shown to users, raising each one's version by one;
        returns their seqs. With `expect` (user -> version) it is a compare-and-set: if any of those
        users' version is not the one expected, `Stale` is raised and nothing is recorded (a feed
        computed from a cached state that another server has since moved is not served)."""

    def served_after(self, region: str, seq: int) -> Iterator[ServedRecord]:
        """The region's served rows with seq above `seq`, in seq order."""

    def recent_served(self, region: str, user_id: str, limit: int) -> list[str]:
        """The items most recently served to this user, newest first (at most `limit`)."""

    def user_served(self, region: str, user_id: str, after: int = 0) -> list[ServedRecord]:
        """Every item served to this user with seq above `after`, oldest first (for the user's own
        export; and what a saved state's served set lacks)."""

    def excluded_items(self, region: str, user_id: str) -> set[str]:
        """Items this user must never be served again: served before, or viewed."""


class Models(Protocol):
    """The learned models: embedding rows (users' in their region, the rest shared) and dense blobs.
    Writer: the trainer (`foryou/learning/online.py`); a server deletes a user's row when it erases or
    refreshes them, marks them in the refresh table, and saves its duel (`foryou/learning/replica.py`)."""

    def save_model_rows(self, region: str | None, table: str, rows: Sequence[tuple[str, bytes]],
                        removed: Sequence[str], version: int = 0, guard: str | None = None) -> list[str]:
        """Atomically upsert embedding rows of `table` (marked with model `version`) and delete
        `removed` keys: in `region`'s store (users' rows) or, with `region` None, the shared one
        (item-side rows). With `guard` (a table of `region`'s store), a row whose key is not a user the
        region holds, or has a row in `guard`, is left out, atomically with the write: a user erased or
        started afresh by a server while the trainer still held their row. Returns the keys left out."""

    def delete_model_rows_if(self, region: str | None, table: str, rows: Sequence[tuple[str, bytes]]) -> int:
        """Delete those of `rows` (key, value) whose stored value is still that value, atomically (a
        refresh mark the trainer is done with, unless a newer refresh replaced it); returns how many."""

    def model_rows_since(self, region: str | None, table: str, after: int, through: int) -> list[tuple[str, bytes]]:
        """The rows of `table` last saved with a version above `after` and at most `through`: what a
        published model version changed, for a server to take in."""

    def iter_model_rows(self, region: str | None, table: str) -> Iterator[tuple[str, bytes]]:
        """Every (key, row) of `table`: in `region`'s store, or the shared one with None."""

    def get_model_rows(self, region: str | None, table: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The saved rows of those of `keys` that have one (a user's row is loaded when they come back)."""

    def model_rows_after(self, region: str | None, table: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` rows of `table` whose keys sort after `after`, in key order: a walk over every
        row a bounded page at a time (expiry of idle rows)."""

    def clear_model_rows(self, region: str | None, table: str) -> None:
        """Delete every row of `table` (item-side rows once a snapshot of them replaced them)."""

    def append_model_delta(self, version: int, blob: bytes) -> None:
        """Save one publication's item-side rows under its model `version` (replacing a delta of the
        same version, which only a trainer killed before publishing it can have left)."""

    def model_deltas(self, after: int) -> list[tuple[int, bytes]]:
        """The deltas of versions above `after`, in version order."""

    def keep_model_deltas(self, after: int, through: int) -> None:
        """Delete every delta whose version is not in (`after`, `through`]: those a snapshot holds, and
        those of versions never published (a trainer killed between a delta and its version)."""

    def save_model_blob(self, key: str, value: bytes) -> None:
        """Store a shared blob (dense weights, watermarks), replacing any under `key`."""

    def get_model_blob(self, key: str) -> bytes | None:
        """The blob as last saved under `key`; None if never (or dropped)."""

    def delete_model_blobs(self, keys: Sequence[str]) -> None:
        """Delete the blobs under `keys` (those not there are no error), in one transaction."""

    def drop_model(self) -> None:
        """Delete every embedding row (shared and per region), delta and blob, atomically per file:
        the next start learns the model again from the log."""


class Erasure(Protocol):
    """Forgetting a user for good. Writer: the erasure service."""

    def erase_user(self, region: str, user_id: str, event_ids: Sequence[str]) -> dict[str, int]:
        """Delete everything of the user in `region`'s store (profile and version, events, served rows,
        interest state, controls, the user's rows of every model table, and the user's idempotency keys
        `event_ids`), so that the id is
        left in no file: deleted content is overwritten and the write-ahead log truncated. Returns the
        rows deleted per kind."""

    def save_tombstone(self, subject: str, until: float) -> None:
        """Remember an erased user's keyed hash (shared: it carries no id) until `until`."""

    def iter_tombstones(self) -> Iterator[tuple[str, float]]:
        """Every (subject, until) saved, expired or not."""


class Store(Catalogue, ItemAggregates, Profiles, EventLog, Models, Erasure, Protocol):
    """Every part, in one store (a backend implements them all, over one data location)."""

    regions: tuple[str, ...]

    def close(self) -> None: ...


def event_key_secret(secret: bytes) -> bytes:
    """The key of idempotency-key hashes, from the privacy secret."""
    return hashlib.sha256(b"foryou event ids:" + secret).digest()


def event_key(key: bytes, region: str, user: str, event_id: str) -> int:
    """An idempotency key as every backend keeps it: a 64-bit keyed hash of (region, user, id). An
    integer is several times cheaper to insert and look up than text, an id that might carry a user id
    is not kept readable, and nobody without the secret can test a guess against the stored keys."""
    found = event_keys(key, region, [user], [event_id])[0]
    assert found is not None
    return found


def event_keys(key: bytes, region: str, users: Sequence[str], ids: Sequence[str | None]) -> list[int | None]:
    """`event_key` of each (user, id), None where the id is: one keyed hash state copied per key."""
    prefix, keyed, read = f"{len(region)}:{region}", hashlib.blake2b(key=key, digest_size=8), int.from_bytes
    out: list[int | None] = []
    for user, event_id in zip(users, ids, strict=True):
        if event_id is None:
            out.append(None)
            continue
        h = keyed.copy()
        h.update(f"{prefix}{len(user)}:{user}{event_id}".encode())
        out.append(read(h.digest(), "big", signed=True))
    return out


def first_new(keys: Sequence[int | None], known: set[int]) -> list[int] | None:
    """The positions of the keys neither `known` nor repeated earlier (None keys always count); None
    when that is every position."""
    given = [k for k in keys if k is not None]
    if not known and len(set(given)) == len(given):
        return None
    seen, kept = set(known), []
    for n, k in enumerate(keys):
        if k is None or k not in seen:
            kept.append(n)
            if k is not None:
                seen.add(k)
    return kept


@dataclass(frozen=True)
class Appended:
    """What `append_new_events` appended: `kept[n]` (a position in the batch) at seq `first + n`."""

    first: int
    kept: Sequence[int]


class EventAppends:
    """`append_events` and `append_new_events` for a backend, over its one `_append`."""

    def _append(self, region: str, events: EventColumns, new_users: Sequence[UserRecord],
                accepted_at: float | None, drop_known: bool) -> Appended:
        """Append `events` (dropping known or repeated keys when `drop_known`, else a `Conflict`)."""
        raise NotImplementedError

    def append_events(self, region: str, events: Sequence[EventRecord], new_users: Sequence[UserRecord],
                      accepted_at: float | None = None) -> list[int]:
        appended = self._append(region, EventColumns.of(events), new_users, accepted_at, drop_known=False)
        return list(range(appended.first, appended.first + len(appended.kept)))

    def append_new_events(self, region: str, events: EventColumns, new_users: Sequence[UserRecord],
                          accepted_at: float | None = None) -> Appended:
        return self._append(region, events, new_users, accepted_at, drop_known=True)


def first_catalogue_version() -> int:
    """Where a store's catalogue version starts: random, so that two stores' versions never match."""
    return secrets.randbelow(1 << 53) + 1
