"""The item-side tables of the model (items, creators, tags) as a trainer publishes them and a server
takes them in: each published version saves one delta (the rows it changed and the ids it removed
since the version published before it), and once the deltas since the last snapshot outweigh that
snapshot, a snapshot of the whole tables replaces them (`Store.keep_model_deltas`). A snapshot is
written a chunk per publication (blobs of its own, then a small manifest naming them), so that a
large one never holds the writer for long.

Why: a publication used to upsert each changed row into a B-tree keyed by table and id, one random
page a row written twice through the WAL, twice a second: 36% of a trainer's time at 1M items, and
each server read the rows back one by one. A delta is one sequential write and one read, and a start
reads at most about twice the tables' size (the snapshot, then the deltas after it). Users' rows stay
rows in their region's store, where erasure and residency act on them.

The encoding: a little-endian u32 header length, a JSON header (versions; per table its row and
removal counts, width and section sizes), then per table the ids (UTF-8, one a line; with a line
break in one, their lengths as int32 first), the removed ids likewise, and the rows' vectors and
Adagrad sums (float32), last-trained times (float64) and the versions that last changed them (int64)."""

from __future__ import annotations

import json
import logging
import secrets
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from foryou.store import Store

log = logging.getLogger("foryou.learning")

TABLES = ("item", "creator", "tag")
SNAPSHOT_BLOB = "model.items"  # the latest snapshot of the item-side tables
_LEN = struct.Struct("<I")
_SNAP_MAGIC = b"FYSNAP01"  # a snapshot's manifest: its version, chunks and size; the chunks are blobs of their own
_MANIFEST = struct.Struct("<QQQQ")  # version, a nonce (chunk keys are never reused), chunks, bytes
PENDING_BLOB = SNAPSHOT_BLOB + ".pending"  # the manifest of a snapshot being written (chunks to clear if killed)
CHUNK_BYTES = 16 << 20  # a snapshot's bytes written per publication


@dataclass
class Part:
    """Rows of one table: ids, their arrays, and the ids removed (a delta's; a snapshot removes none)."""

    keys: list[str]
    vectors: np.ndarray  # (n, dim) float32
    accum: np.ndarray  # (n, dim) float32
    seen: np.ndarray  # (n,) float64
    ver: np.ndarray  # (n,) int64: the version that last changed each row
    removed: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class Publication:
    version: int
    prev: int  # the version published before this delta (a snapshot: 0)
    parts: dict[str, Part]
    size: int = 0  # bytes, as read


class Table(Protocol):
    """What publishing needs of an embedding table (`foryou/learning/embeddings.py`)."""

    dirty: set[int]
    removed: set[str]

    def take_part(self, version: int) -> Part: ...

    def whole(self) -> Part: ...

    def apply(self, part: Part) -> list[str]: ...

    def clear(self) -> None: ...


def _strings(names: Sequence[str]) -> tuple[bytes, bytes]:
    """Lengths (int32) and UTF-8 bytes; with no line break in any name, no lengths and the names one a
    line (one split decodes a million of them, a loop over lengths took 0.8 s)."""
    joined = "\n".join(names)
    if joined.count("\n") == max(len(names) - 1, 0):
        return b"", joined.encode()
    raw = [n.encode() for n in names]
    return np.fromiter(map(len, raw), np.int32, len(raw)).tobytes(), b"".join(raw)


def _unstrings(lengths: bytes, data: bytes, n: int) -> list[str]:
    if not lengths:
        return data.decode().split("\n") if n else []
    ends = np.cumsum(np.frombuffer(lengths, np.int32)).tolist()
    out, start = [], 0
    for end in ends:
        out.append(data[start:end].decode())
        start = end
    return out


def encode(pub: Publication) -> bytes:
    return b"".join(encode_buffers(pub))


def encode_buffers(pub: Publication) -> list[memoryview]:
    """`encode`'s bytes as the buffers they join, the arrays' own memory among them (a snapshot at 1M
    items is ~220 MB: copying it twice more to join it would triple what writing it holds)."""
    tables, sections = [], []
    for name, part in pub.parts.items():
        key_lens, keys = _strings(part.keys)
        gone_lens, gone = _strings(part.removed)
        arrays: list[np.ndarray] = [
            np.ascontiguousarray(part.vectors, np.float32), np.ascontiguousarray(part.accum, np.float32),
            np.ascontiguousarray(part.seen, np.float64), np.ascontiguousarray(part.ver, np.int64)]
        strings: list[bytes] = [key_lens, keys, gone_lens, gone]
        parts = [memoryview(b) for b in strings] + [a.reshape(-1).view(np.uint8).data for a in arrays]
        dim = int(part.vectors.shape[1]) if part.vectors.ndim == 2 else 0
        tables.append({"name": name, "n": len(part), "gone": len(part.removed), "dim": dim,
                       "sizes": [len(p) for p in parts]})
        sections += parts
    header = json.dumps({"version": pub.version, "prev": pub.prev, "tables": tables}).encode()
    return [memoryview(_LEN.pack(len(header))), memoryview(header), *sections]


def _span(buffers: Sequence[memoryview], start: int, stop: int) -> bytes:
    """Bytes `start` to `stop` of the buffers, joined."""
    out, at = [], 0
    for b in buffers:
        if at >= stop:
            break
        if at + len(b) > start:
            out.append(b[max(0, start - at):stop - at])
        at += len(b)
    return b"".join(out)


def decode(blob: bytes) -> Publication:
    (size,) = _LEN.unpack_from(blob)
    header = json.loads(blob[_LEN.size:_LEN.size + size])
    at = _LEN.size + size
    parts = {}
    for table in header["tables"]:
        chunks = []
        for n in table["sizes"]:
            chunks.append(blob[at:at + n])
            at += n
        key_lens, keys, gone_lens, gone, vectors, accum, seen, ver = chunks
        n, dim = table["n"], table["dim"]
        parts[table["name"]] = Part(
            _unstrings(key_lens, keys, n), np.frombuffer(vectors, np.float32).reshape(n, dim),
            np.frombuffer(accum, np.float32).reshape(n, dim), np.frombuffer(seen, np.float64),
            np.frombuffer(ver, np.int64), _unstrings(gone_lens, gone, table.get("gone", 0)))
    return Publication(header["version"], header["prev"], parts, len(blob))


def chain(store: Store, after: int, through: int) -> list[Publication] | None:
    """The deltas that take tables as of version `after` to `through`, in order; None when some are no
    longer kept (a snapshot replaced them: start from it instead)."""
    out: list[Publication] = []
    at = after
    for version, blob in store.model_deltas(after):
        if version > through:
            break
        pub = decode(blob)
        if pub.prev != at:
            return None
        out.append(pub)
        at = version
    return out if at == through else None


def _manifest(raw: bytes) -> tuple[int, int, int, int]:
    """(version, nonce, chunks, bytes) of a snapshot's manifest."""
    return _MANIFEST.unpack_from(raw, len(_SNAP_MAGIC))


def _chunk_keys(raw: bytes) -> list[str]:
    """The keys of the chunks a manifest names."""
    version, nonce, chunks, _ = _manifest(raw)
    return [f"{SNAPSHOT_BLOB}@{version}.{nonce:x}/{k}" for k in range(chunks)]


def read_snapshot(store: Store) -> Publication | Literal[False] | None:
    """The latest complete snapshot; None before the first; False when one of its chunks is gone (a
    newer snapshot replaced it while it was read: read again)."""
    raw = store.get_model_blob(SNAPSHOT_BLOB)
    if raw is None:
        return None
    if not raw.startswith(_SNAP_MAGIC):  # written whole, as before chunks
        return decode(raw)
    size = _manifest(raw)[3]
    parts = [store.get_model_blob(key) for key in _chunk_keys(raw)]
    if any(p is None for p in parts):
        return False
    blob = b"".join(p for p in parts if p is not None)
    return decode(blob) if len(blob) == size else False


def snapshot_and_after(store: Store, through: int) -> tuple[Publication | None, list[Publication]] | None:
    """The latest snapshot (None before the first) and the deltas after it up to version `through`;
    None when they do not reach `through` as read (a snapshot newer than `through` replaced the deltas
    meanwhile, or `through` is not published yet): read the version again, then these."""
    snap = read_snapshot(store)
    if snap is False:
        return None
    start = snap.version if snap is not None else 0
    if start > through:
        return None
    deltas = chain(store, start, through)
    return None if deltas is None else (snap, deltas)


def held_as_rows(store: Store) -> bool:
    """Whether the item-side tables are still saved as rows, as before deltas (no snapshot, no delta)."""
    return store.get_model_blob(SNAPSHOT_BLOB) is None and not store.model_deltas(0)


def load(tables: Mapping[str, Table], snap: Publication | None, deltas: Sequence[Publication]) -> None:
    """Empty `tables` and fill them from a snapshot and the deltas after it."""
    for table in tables.values():
        table.clear()
    apply(tables, ([snap] if snap is not None else []) + list(deltas))


def apply(tables: Mapping[str, Table], deltas: Sequence[Publication]) -> set[str]:
    """Take in deltas, in order; returns the item ids whose rows they put."""
    items: set[str] = set()
    for pub in deltas:
        for name, part in pub.parts.items():
            if name in tables:
                put = tables[name].apply(part)
                if name == "item":
                    items.update(put)
    return items


class Publisher:
    """The writer's side (a trainer, or a process that trains in-process): a delta per published
    version, and a snapshot once the deltas since the last one outweigh it (what is written stays within
    about twice the deltas). Deltas published in the last `keep_s` stay past a snapshot, so that a
    server that read the version before it still finds them and does not read the whole snapshot."""

    def __init__(self, keep_s: float = 10.0, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.keep_s = keep_s
        self.chunk_bytes = chunk_bytes
        self.published = 0
        self.delta_bytes = 0
        self.snapshot_bytes = 0
        self._times: deque[tuple[float, int]] = deque()  # (when, version) of recent publications
        self._writing: tuple[bytes, list[memoryview], int] | None = None  # being written: manifest, bytes, chunks done
        self._deltas: deque[tuple[int, int]] = deque()  # (version, bytes) of the deltas kept, oldest first
        self._trim = 0  # deltas up to this version are to go (a snapshot holds them), a chunk's worth a call

    def loaded(self, version: int, snap: Publication | None, deltas: Sequence[Publication]) -> None:
        """The tables were restored as of `version` from these."""
        self.published = version
        self.snapshot_bytes = snap.size if snap is not None else 0
        self.delta_bytes = sum(d.size for d in deltas)
        self._deltas = deque((d.version, d.size) for d in deltas)

    def publish(self, store: Store, tables: Mapping[str, Table], version: int) -> int:
        """Save the rows changed since the last publication as the delta of `version`; returns the
        version to publish (one more than `version` when only removals came since the last)."""
        if version == self.published:
            if not any(t.dirty or t.removed for t in tables.values()):
                return version
            version += 1
        blob = encode(Publication(version, self.published, {n: t.take_part(version) for n, t in tables.items()}))
        store.append_model_delta(version, blob)
        self.published = version
        self.delta_bytes += len(blob)
        self._deltas.append((version, len(blob)))
        return version

    def compact(self, store: Store, tables: Mapping[str, Table], now: float, force: bool = False) -> bool:
        """Once the version is published: the snapshot when due (or `force`), `chunk_bytes` of it per
        call; returns whether one was completed. Why in chunks: at 1M items a snapshot is ~220 MB,
        and writing it at once held the trainer ~1 s (2-4 s beside a busy server), during which
        nothing was published: the model lag's tail. `force` writes all that is left at once."""
        times = self._times
        if not times or times[-1][1] != self.published:
            times.append((now, self.published))
        while len(times) > 1 and times[1][0] <= now - self.keep_s:
            times.popleft()
        self._trim_some(store, force)
        if self._writing is None:
            if self.delta_bytes <= self.snapshot_bytes and not force:
                return False
            whole = Publication(self.published, 0, {n: t.whole() for n, t in tables.items()})
            self._start(store, encode_buffers(whole))
        assert self._writing is not None
        manifest, blob, done = self._writing
        keys = _chunk_keys(manifest)
        for k in range(done, len(keys) if force else min(done + 1, len(keys))):
            store.save_model_blob(keys[k], _span(blob, k * self.chunk_bytes, (k + 1) * self.chunk_bytes))
            done = k + 1
        if done < len(keys):
            self._writing = (manifest, blob, done)
            return False
        self._writing = None
        version = _manifest(manifest)[0]
        old = store.get_model_blob(SNAPSHOT_BLOB)
        store.save_model_blob(SNAPSHOT_BLOB, manifest)
        if old is not None and old.startswith(_SNAP_MAGIC):
            store.delete_model_blobs(_chunk_keys(old))
        store.delete_model_blobs([PENDING_BLOB])
        kept_after = times[0][1] if times[0][0] <= now - self.keep_s else 0
        self._trim = min(kept_after, version)
        self._trim_some(store, force)
        size = _manifest(manifest)[3]
        log.debug("model snapshot of version %d: %d bytes", version, size)
        self.snapshot_bytes = size
        return True

    def _trim_some(self, store: Store, everything: bool) -> None:
        """Delete the oldest deltas a snapshot holds, about `chunk_bytes` of them (all with
        `everything`): at 1M items a snapshot replaces ~200 MB of deltas, and deleting them at once
        held the writer over a second. The last call also takes any a killed writer left."""
        if not self._trim:
            return
        deltas, upto, freed = self._deltas, 0, 0
        while deltas and deltas[0][0] <= self._trim and (everything or freed < self.chunk_bytes):
            upto, size = deltas.popleft()
            freed += size
        if not deltas or deltas[0][0] > self._trim:
            upto, self._trim = self._trim, 0
        if upto:
            store.keep_model_deltas(upto, self.published)

    def _start(self, store: Store, blob: list[memoryview]) -> None:
        """Begin a snapshot of the tables as published: the chunks of one a killed writer left unfinished go
        first; its manifest is saved as pending, so that a writer killed during this one clears them."""
        stale = store.get_model_blob(PENDING_BLOB)
        if stale is not None and stale != store.get_model_blob(SNAPSHOT_BLOB):  # (killed once it was complete)
            store.delete_model_blobs(_chunk_keys(stale))
        size = sum(len(b) for b in blob)
        chunks = max(1, -(-size // self.chunk_bytes))
        manifest = _SNAP_MAGIC + _MANIFEST.pack(self.published, secrets.randbits(63), chunks, size)
        store.save_model_blob(PENDING_BLOB, manifest)
        self._writing = (manifest, blob, 0)
        self.delta_bytes = 0  # the deltas after this version count towards the next snapshot
