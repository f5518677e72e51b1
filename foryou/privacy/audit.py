"""The audit log: an append-only, hash-chained record of every privacy and admin call and every read
of a user's raw data. Each record holds the time, the API key id (null: the operator's command line), the action,
the subject as a keyed hash (HMAC-SHA256 with the privacy secret, privacy/secret.py, so the log itself
carries no user id) and the outcome, plus the previous record's hash and its own. The latest hash is
also kept outside the log (`audit.head`), so that a cut-off tail is caught as surely as an edit, a
deletion or a reordering. `verify` names the first bad record. Appends take a file lock and re-read
the head, so a command-line tool (`foryou keys`) may append while a server runs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import orjson

from foryou.errors import ForYouError, Unavailable
from foryou.types import format_time

LOG, HEAD = "audit.log", "audit.head"
_GENESIS = "0" * 64
# The API key the current request came with (the HTTP edge sets it); audit records name it.
CALLER: ContextVar[str | None] = ContextVar("foryou_caller", default=None)
_UNWRITABLE = "the audit log cannot be written: audited calls are refused until it can"


def keyed_hash(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _digest(prev: str, body: dict[str, object]) -> str:
    return hashlib.sha256(prev.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class AuditLog:
    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = directory
        self.key = key  # the privacy secret (privacy/secret.py)

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
        with open(os.open(self.directory / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # released when the file closes
            seq, prev = _head(self.directory)  # read under the lock: another process may have appended
            body: dict[str, object] = {
                "seq": seq + 1, "ts": format_time(now), "key": CALLER.get(), "action": action,
                "subject": keyed_hash(self.key, subject) if subject is not None else None, "outcome": outcome,
                "prev": prev,
            }
            if target is not None:
                body["target"] = target
            record = {**body, "hash": _digest(prev, body)}
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

    @contextlib.contextmanager
    def recording(self, action: str, subject: str | None, now: float) -> Iterator[None]:
        """Audit the call inside: "ok", or the error's kind when it raises (and re-raise). Nothing runs
        while the log cannot be appended to (fail closed: no unrecorded read or erasure)."""
        _head(self.directory)
        try:  # and writable (a full or read-only disk): checked before, so that no action goes unrecorded
            os.close(os.open(self.directory / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError:
            raise Unavailable(_UNWRITABLE, field="audit") from None
        try:
            yield
        except ForYouError as exc:
            self.append(action, subject, type(exc).__name__, now)
            raise
        self.append(action, subject, "ok", now)

    def page(self, after: int = 0, limit: int = 100) -> list[dict[str, object]]:
        """Records with seq > `after`, oldest first, at most `limit`."""
        out: list[dict[str, object]] = []
        try:
            for record in _records(self.directory):
                if int(record.get("seq", 0)) > after:  # type: ignore[call-overload]
                    out.append(record)
                    if len(out) >= limit:
                        break
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise Unavailable("the audit log is damaged: run `foryou audit verify`", field="audit") from None
        return out

    def subject(self, user_id: str) -> str:
        """The keyed hash a record carries for this user id (to find a user's records)."""
        return keyed_hash(self.key, user_id)


def audited(audit: AuditLog | None, action: str, subject: str | None,
            now: float) -> contextlib.AbstractContextManager[None]:
    """`audit.recording(...)`, or nothing when there is no log (a service used on its own)."""
    return audit.recording(action, subject, now) if audit is not None else contextlib.nullcontext()


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


def _records(directory: Path) -> Iterator[dict[str, object]]:
    try:
        with open(directory / LOG, "rb") as lines:
            for line in lines:
                yield orjson.loads(line)
    except FileNotFoundError:
        return


@dataclass
class Verdict:
    records: int
    problem: str | None  # None: intact
    head: str = ""  # "SEQ:HASH" of the last record: kept elsewhere, it is an anchor for a later verify


def verify(directory: Path, anchor: str | None = None) -> Verdict:
    """Walk the chain: each record's seq follows the last, its `prev` is the last hash and its `hash`
    is its own; the head file names the last record. The first broken rule is the problem. With an
    `anchor` ("SEQ:HASH", a head recorded earlier, away from this directory) the log must still hold
    that record: this catches a log cut off together with a rewritten head, or both deleted."""
    anchor_seq, _, anchor_hash = (anchor or "0:").partition(":")
    if not anchor_seq.isdigit() or (anchor is not None and int(anchor_seq) < 1):
        return Verdict(0, f"the anchor {anchor!r} is not SEQ:HASH")
    prev, expected, count = _GENESIS, 1, 0
    try:
        for record in _records(directory):
            count += 1
            if not isinstance(record, dict):
                return Verdict(count, f"record {expected}: not a JSON record (the log was edited)")
            seq = record.get("seq")
            if seq != expected:
                return Verdict(count, f"record {expected}: found seq {seq} (a record was deleted, added or moved)")
            body = {k: v for k, v in record.items() if k != "hash"}
            if record.get("prev") != prev or _digest(prev, body) != record.get("hash"):
                return Verdict(count, f"record {expected}: its hash does not match (the record was edited)")
            if expected == int(anchor_seq) and record["hash"] != anchor_hash:
                return Verdict(count, f"record {expected}: not the anchor's record (the log was rewritten)")
            prev, expected = str(record["hash"]), expected + 1
    except orjson.JSONDecodeError:
        return Verdict(count, f"record {expected}: not a JSON record (the log was edited)")
    except OSError as exc:
        return Verdict(count, f"the log is unreadable ({exc.strerror})")
    try:
        seq, head = _read_head(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return Verdict(count, "the head file is unreadable")
    if (seq, head) != (expected - 1, prev):
        return Verdict(count, f"the log ends at record {expected - 1} but the head names record {seq} "
                              "(the log was cut off, or the head replaced)")
    if int(anchor_seq) > expected - 1:
        return Verdict(count, f"the log ends at record {expected - 1}, before the anchor's record {anchor_seq} "
                              "(the log was cut off and its head rewritten)")
    return Verdict(count, None, f"{seq}:{head}")
