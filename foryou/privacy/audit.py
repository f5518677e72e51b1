"""The audit log: an append-only, hash-chained record of every privacy and admin call and every read
of a user's raw data. Each record holds the time, the API key id (null: the operator's command line), the action,
the subject as a keyed hash (HMAC-SHA256 with the privacy secret, privacy/secret.py, so the log itself
carries no user id) and the outcome, plus the previous record's hash and its own. The latest hash is
also kept outside the log (`audit.head`), so that a cut-off tail is caught as surely as an edit, a
deletion or a reordering. `verify` names the first bad record.

Records go to `audit.log`; past `rotate_bytes` it is renamed to an immutable segment named by its first
record's seq (`audit-000000000001.log`) and a new `audit.log` continues the chain. Appends lock
`audit.lock` (not the log, which a rotation renames) and re-read the head under it, so a command-line
tool (`foryou keys`) may append while a server runs. Pages seek through a sparse in-memory index
instead of reading from the first record."""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from foryou.datadir import private_dir
from foryou.errors import ForYouError, Unavailable
from foryou.types import format_time

LOG, HEAD, LOCK = "audit.log", "audit.head", "audit.lock"
SEGMENT = re.compile(r"audit-(\d{12})\.log")
STRIDE = 256  # the page index keeps the offset of every STRIDE-th record of each file
_GENESIS = "0" * 64
# The API key the current request came with (the HTTP edge sets it); audit records name it.
CALLER: ContextVar[str | None] = ContextVar("foryou_caller", default=None)
_UNWRITABLE = "the audit log cannot be written: audited calls are refused until it can"
_DAMAGED = "the audit log is damaged: run `foryou audit verify`"


def keyed_hash(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def segment_name(first_seq: int) -> str:
    """The file a rotated log becomes: named by its first record's seq, zero-padded so names sort."""
    return f"audit-{first_seq:012d}.log"


def _digest(prev: str, body: dict[str, object]) -> str:
    return hashlib.sha256(prev.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class _Index:
    """Where every STRIDE-th record of one file starts, by seq; covers the file's first `scanned` bytes."""

    seqs: list[int] = field(default_factory=list)  # rising
    offsets: list[int] = field(default_factory=list)
    scanned: int = 0
    lines: int = 0

    def offset(self, seq: int) -> int:
        """A byte offset at or before the record `seq` (0 when no mark is that early)."""
        at = bisect.bisect_right(self.seqs, seq)
        return self.offsets[at - 1] if at else 0

    def first(self) -> int | None:
        return self.seqs[0] if self.offsets[:1] == [0] else None


@dataclass(frozen=True)
class _File:
    path: Path
    start: int | None  # a segment's first seq, from its name; None for the current log
    key: tuple[int, int]  # device and inode: the index follows a file through a rename
    size: int


class AuditLog:
    def __init__(self, directory: Path, key: bytes, rotate_bytes: int = 0) -> None:
        self.directory = directory
        self.key = key  # the privacy secret (privacy/secret.py)
        self.rotate_bytes = rotate_bytes  # 0: never rotate
        self.decoded = 0  # records parsed by pages and their index: what a page costs, for tests
        self._indexes: dict[tuple[int, int], _Index] = {}
        self._mutex = threading.Lock()  # the indexes are shared by the threads that page
        # The lock file exists from the start, so that readers always have it to lock (and a request
        # does not create it); where it cannot be created yet, the first append reports why. The
        # directory is made (private) where no store made it: a store that is not a file (memory://).
        with contextlib.suppress(OSError):
            if not directory.exists():
                private_dir(directory)
            os.close(os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600))

    def append(self, action: str, subject: str | None, outcome: str, now: float,
               target: str | None = None) -> dict[str, object]:
        """Append one record durably (fsync) and move the head to it. `subject` is a user id (stored
        as its keyed hash); `target` names what else the action was on (an API key id). 503 when the
        log cannot be written."""
        try:
            return self._append(action, subject, outcome, now, target)
        except OSError:
            raise Unavailable(_UNWRITABLE, field="audit") from None

    def _append(self, action: str, subject: str | None, outcome: str, now: float,
                target: str | None) -> dict[str, object]:
        with _locked(self.directory):
            seq, prev = _head(self.directory)  # read under the lock: another process may have appended
            self._rotate_if_due()
            body: dict[str, object] = {
                "seq": seq + 1, "ts": format_time(now), "key": CALLER.get(), "action": action,
                "subject": keyed_hash(self.key, subject) if subject is not None else None, "outcome": outcome,
                "prev": prev,
            }
            if target is not None:
                body["target"] = target
            record = {**body, "hash": _digest(prev, body)}
            with open(os.open(self.directory / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
                out.write(orjson.dumps(record) + b"\n")
                out.flush()
                os.fsync(out.fileno())
            tmp = self.directory / (HEAD + ".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as head:
                head.write(orjson.dumps({"seq": seq + 1, "hash": record["hash"]}))
                head.flush()
                os.fsync(head.fileno())
            os.replace(tmp, self.directory / HEAD)
        return record

    def _rotate_if_due(self) -> None:
        """Under the lock: move a full `audit.log` to its segment, so that the next record starts a new one
        (its `prev` is the segment's last hash: the chain goes on across files)."""
        log = self.directory / LOG
        try:
            size = log.stat().st_size
        except FileNotFoundError:
            return
        if self.rotate_bytes <= 0 or size < self.rotate_bytes:
            return
        first = _first_seq(log)
        segment = self.directory / segment_name(first) if first is not None else None
        # A first line that is not a record cannot name the segment, and a segment is never overwritten:
        # keep appending here, and verify names the damage.
        if segment is None or segment.exists():
            return
        os.rename(log, segment)
        _fsync_dir(self.directory)  # the rename must outlive a crash, or the new file would clash with it

    @contextlib.contextmanager
    def recording(self, action: str, subject: str | None, now: float) -> Iterator[None]:
        """Audit the call inside: "ok", or the error's kind when it raises (and re-raise). Nothing runs
        while the log cannot be appended to (fail closed: no unrecorded read or erasure)."""
        _head(self.directory)
        try:  # and writable (a full or read-only disk): checked before, so that no action goes unrecorded
            _check_writable(self.directory)
        except OSError:
            raise Unavailable(_UNWRITABLE, field="audit") from None
        try:
            yield
        except ForYouError as exc:
            self.append(action, subject, type(exc).__name__, now)
            raise
        self.append(action, subject, "ok", now)

    def page(self, after: int = 0, limit: int = 100) -> list[dict[str, object]]:
        """Records with seq > `after`, oldest first, at most `limit`, across files. It seeks through the
        index, so it parses at most about `limit` + STRIDE records however long the log is."""
        if limit <= 0:
            return []
        try:
            with self._mutex, _shared(self.directory):  # no rotation or append while the files are listed
                return self._page(after, limit)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise Unavailable(_DAMAGED, field="audit") from None
        except OSError:
            raise Unavailable("the audit log cannot be read", field="audit") from None

    def _page(self, after: int, limit: int) -> list[dict[str, object]]:
        files = self._files()
        first = self._first_file(files, after)
        out: list[dict[str, object]] = []
        for n, file in enumerate(files[first:]):
            offset = self._index(file).offset(after + 1) if n == 0 else 0
            out += self._read(file.path, offset, after, limit - len(out))
            if len(out) >= limit:
                break
        return out

    def _files(self) -> list[_File]:
        """The segments in seq order, then the current log; indexes of files gone are dropped."""
        files = [_stat(path, start) for start, path in _segments(self.directory)]
        with contextlib.suppress(FileNotFoundError):  # none yet
            files.append(_stat(self.directory / LOG, None))
        keys = {file.key for file in files}
        self._indexes = {key: index for key, index in self._indexes.items() if key in keys}
        return files

    def _first_file(self, files: list[_File], after: int) -> int:
        """The last file starting at or before record `after` + 1 (a segment by its name, the current log
        by its first record); the first file when none is known to."""
        found = 0
        for n, file in enumerate(files):
            start = file.start if file.start is not None else self._index(file).first()
            if start is not None and start <= after + 1:
                found = n
        return found

    def _index(self, file: _File) -> _Index:
        """The file's index, extended over what was appended since it was last looked at."""
        index = self._indexes.get(file.key)
        if index is None or file.size < index.scanned:  # new to us, or cut and rewritten: derive it again
            index = self._indexes[file.key] = _Index()
        if file.size > index.scanned:
            self._extend(file.path, index)
        return index

    def _extend(self, path: Path, index: _Index) -> None:
        with open(path, "rb") as lines:
            lines.seek(index.scanned)
            for line in lines:
                if not line.endswith(b"\n"):
                    break  # still being written (or cut off): indexed once it is whole
                if index.lines % STRIDE == 0:
                    self._mark(index, line)
                index.lines += 1
                index.scanned += len(line)

    def _mark(self, index: _Index, line: bytes) -> None:
        try:
            seq = _seq(self._decode(line))
        except (orjson.JSONDecodeError, TypeError):
            return  # a damaged record is no mark: a page reading through it reports it
        if not index.seqs or seq > index.seqs[-1]:  # rising, or bisecting would mislead
            index.seqs.append(seq)
            index.offsets.append(index.scanned)

    def _read(self, path: Path, offset: int, after: int, limit: int) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        with open(path, "rb") as lines:
            lines.seek(offset)
            for line in lines:
                if not line.endswith(b"\n"):
                    break  # an append in progress in another process
                record = self._decode(line)
                if _seq(record) > after:
                    out.append(record)
                    if len(out) >= limit:
                        break
        return out

    def _decode(self, line: bytes) -> dict[str, object]:
        self.decoded += 1
        record = orjson.loads(line)
        if not isinstance(record, dict):
            raise TypeError("not a record")
        return record

    def subject(self, user_id: str) -> str:
        """The keyed hash a record carries for this user id (to find a user's records)."""
        return keyed_hash(self.key, user_id)


def audited(audit: AuditLog | None, action: str, subject: str | None,
            now: float) -> contextlib.AbstractContextManager[None]:
    """`audit.recording(...)`, or nothing when there is no log (a service used on its own)."""
    return audit.recording(action, subject, now) if audit is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The writers' lock, on a file of its own: the log itself is renamed by a rotation, and a process
    waiting on the old file's lock would then append to a segment."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _shared(directory: Path) -> Iterator[None]:
    """A reader's lock: the files do not change while held. Without a lock file (nothing appended yet,
    or a read-only copy) the reader goes on unlocked rather than create one."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _check_writable(directory: Path) -> None:
    """What an append will open, and the directory it writes the head (and a rotated log) into."""
    os.close(os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600))
    os.close(os.open(directory / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    if not os.access(directory, os.W_OK):
        raise OSError(errno.EACCES, "the data directory is not writable")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seq(record: dict[str, object]) -> int:
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise TypeError("a record without a seq")
    return seq


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """The rotated segments, (first seq, path), in seq order."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = SEGMENT.fullmatch(entry.name)
            if match:
                found.append((int(match[1]), Path(entry.path)))
    return sorted(found)


def _stat(path: Path, start: int | None) -> _File:
    st = path.stat()
    return _File(path, start, (st.st_dev, st.st_ino), st.st_size)


def _first_seq(log: Path) -> int | None:
    try:
        with open(log, "rb") as lines:
            return int(orjson.loads(lines.readline())["seq"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _head(directory: Path) -> tuple[int, str]:
    """`_read_head`, or 503 when the head is unreadable: audited calls stop until an operator looks."""
    try:
        return _read_head(directory)
    except (OSError, ValueError, KeyError, TypeError):
        raise Unavailable("the audit log's head is unreadable: audited calls are refused until it is "
                          "repaired (`foryou audit verify`)", field="audit") from None


def _read_head(directory: Path) -> tuple[int, str]:
    try:
        head = orjson.loads((directory / HEAD).read_bytes())
        return int(head["seq"]), str(head["hash"])
    except FileNotFoundError:
        return 0, _GENESIS


@dataclass
class Verdict:
    records: int
    problem: str | None  # None: intact
    head: str = ""  # "SEQ:HASH" of the last record: kept elsewhere, it is an anchor for a later verify
    files: int = 0  # segments and the current log walked


@dataclass
class _Walk:
    """Where a verify has got to: the next seq due, the last hash, records and files seen."""

    anchor_seq: int
    anchor_hash: str
    prev: str = _GENESIS
    expected: int = 1
    count: int = 0
    files: int = 0

    def verdict(self, problem: str | None, head: str = "") -> Verdict:
        return Verdict(self.count, problem, head, self.files)


def verify(directory: Path, anchor: str | None = None) -> Verdict:
    """Walk the chain through every segment in seq order, then `audit.log`: each record's seq follows
    the last, its `prev` is the last hash and its `hash` is its own, and each segment starts where its
    name says; the head file names the last record. The first broken rule is the problem. With an
    `anchor` ("SEQ:HASH", a head recorded earlier, away from this directory) the log must still hold
    that record: this catches a log cut off together with a rewritten head, or both deleted."""
    anchor_seq, _, anchor_hash = (anchor or "0:").partition(":")
    if not anchor_seq.isdigit() or (anchor is not None and int(anchor_seq) < 1):
        return Verdict(0, f"the anchor {anchor!r} is not SEQ:HASH")
    walk = _Walk(int(anchor_seq), anchor_hash)
    with _shared(directory):  # a server may be appending, or rotating
        try:
            for start, path in [*_segments(directory), (None, directory / LOG)]:
                problem = _walk_file(walk, path, start)
                if problem is not None:
                    return walk.verdict(problem)
        except OSError as exc:
            return walk.verdict(f"the log is unreadable ({exc.strerror})")
        try:
            head = _read_head(directory)
        except (OSError, ValueError, KeyError, TypeError):
            return walk.verdict("the head file is unreadable")
    return _check_end(walk, head)


def _walk_file(walk: _Walk, path: Path, start: int | None) -> str | None:
    """Check one file's records against the walk so far (`start`: the segment's seq by its name, None for
    the current log); the problem, or None."""
    if start is not None and start != walk.expected:
        return (f"record {walk.expected}: the next segment, {path.name}, starts at record {start} "
                "(a segment was deleted, moved away, added or cut off)")
    if start is None and not path.exists():
        return None  # nothing appended yet
    walk.files += 1
    with open(path, "rb") as lines:
        for line in lines:
            walk.count += 1
            at = f"record {walk.expected}" if start is None else f"record {walk.expected} in {path.name}"
            problem = _check_record(walk, line, at)
            if problem is not None:
                return problem
    if start is not None and walk.expected == start:
        return f"record {start}: {path.name} is empty (a segment never is: it was cut off)"
    return None


def _check_record(walk: _Walk, line: bytes, at: str) -> str | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return f"{at}: not a JSON record (the log was edited)"
    if not isinstance(record, dict):
        return f"{at}: not a JSON record (the log was edited)"
    seq = record.get("seq")
    if seq != walk.expected:
        return f"{at}: found seq {seq} (a record was deleted, added or moved)"
    body = {k: v for k, v in record.items() if k != "hash"}
    if record.get("prev") != walk.prev or _digest(walk.prev, body) != record.get("hash"):
        return f"{at}: its hash does not match (the record was edited)"
    if walk.expected == walk.anchor_seq and record["hash"] != walk.anchor_hash:
        return f"{at}: not the anchor's record (the log was rewritten)"
    walk.prev, walk.expected = str(record["hash"]), walk.expected + 1
    return None


def _check_end(walk: _Walk, head: tuple[int, str]) -> Verdict:
    last = walk.expected - 1
    seq, hash_ = head
    if (seq, hash_) != (last, walk.prev):
        return walk.verdict(f"the log ends at record {last} but the head names record {seq} "
                            "(the log was cut off, or the head replaced)")
    if walk.anchor_seq > last:
        return walk.verdict(f"the log ends at record {last}, before the anchor's record {walk.anchor_seq} "
                            "(the log was cut off and its head rewritten)")
    return walk.verdict(None, f"{seq}:{hash_}")
