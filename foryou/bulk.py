"""Bulk import of JSON Lines files (Item and Event objects, one per line), validated like the API and
applied in batches of up to 10,000. A bad line stops the import with its line number; the batches
before it are kept (each batch is all-or-nothing).

Events take a path of their own: a batch is parsed once (orjson) and checked field by field against
the API's rules in one plain loop (`fast_events`), which accepts only the plain shapes and hands
anything else to the API's own validation (pydantic), so that a bad line gets exactly the API's error;
then appended without reading each user's state (`IngestService.load`)."""

from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from foryou.engine import Engine
from foryou.errors import FieldError, InvalidInput
from foryou.http.errors import field_error
from foryou.ingest import MAX_FUTURE_S
from foryou.types import EVENT_TYPES, ID_PATTERN, EventIn, EventRecord, ItemIn

BATCH = 10_000
CHECKPOINT_EVERY = 20  # batches
_ITEMS = TypeAdapter(list[ItemIn])
_EVENTS = TypeAdapter(list[EventIn])


@dataclass
class LoadReport:
    items: int = 0
    events: int = 0
    duplicates: int = 0


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _batches(path: Path) -> Iterator[tuple[list[int], list[bytes]]]:
    """(line numbers, lines) of non-blank lines, BATCH at a time."""
    numbers: list[int] = []
    batch: list[bytes] = []
    with _open(path) as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                numbers.append(number)
                batch.append(line)
                if len(batch) >= BATCH:
                    yield numbers, batch
                    numbers, batch = [], []
    if batch:
        yield numbers, batch


def _located(path: Path, numbers: list[int], errors: list[FieldError]) -> InvalidInput:
    """Name the file and line of each error instead of its index in the batch."""
    located = []
    for e in errors:
        where = f"{path}:{numbers[e.index]}" if e.index is not None and e.index < len(numbers) else str(path)
        located.append(FieldError(e.field, f"{where}: {e.field}: {e.message}"))
    return InvalidInput(located)


def _validate(adapter: TypeAdapter[list[Any]], path: Path, numbers: list[int], lines: list[bytes]) -> list[Any]:
    try:
        return adapter.validate_json(b"[" + b",".join(lines) + b"]")
    except ValidationError as exc:
        problems = exc.errors()
        if any(p["type"] == "json_invalid" for p in problems):
            for number, line in zip(numbers, lines, strict=True):
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise InvalidInput([FieldError("line", f"{path}:{number}: malformed JSON")]) from None
        errors = [field_error({**p, "loc": ("items", *p["loc"])}) for p in problems]
        raise _located(path, numbers, errors) from None


def read_jsonl(adapter: TypeAdapter[list[Any]], path: Path) -> Iterator[tuple[list[int], list[Any]]]:
    """(line numbers, validated objects) of a JSON Lines file, BATCH lines at a time; a bad line raises
    `InvalidInput` naming the file and line."""
    for numbers, lines in _batches(path):
        yield numbers, _validate(adapter, path, numbers, lines)


_EVENT_FIELDS = frozenset(EventIn.model_fields)
_TYPES = frozenset(EVENT_TYPES)
_ID = re.compile(ID_PATTERN)
# The plain RFC 3339 shape (upper-case T and Z, at most microseconds), which datetime reads as it is;
# every other timestamp goes to the API's validation.
_PLAIN_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_FIRST = datetime.fromisoformat("0001-01-02T00:00:00Z")


def fast_events(objects: list[Any], index: Mapping[str, int], now: float, users: set[str]) -> list[EventRecord] | None:
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
            moment = datetime.fromisoformat(ts)
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


def _parsed(lines: list[bytes]) -> list[Any] | None:
    """The batch's JSON values, or None where a line is not JSON (the API's validation says which)."""
    try:
        return orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError:
        return None


def load_events(engine: Engine, path: Path, bar: Any, report: LoadReport) -> None:
    """Load an events file, a batch at a time (`fast_events`, else the API's validation)."""
    users: set[str] = set()
    service = engine.events
    for n, (numbers, lines) in enumerate(_batches(path), 1):
        objects = _parsed(lines)
        records = None
        if objects is not None:
            records = fast_events(objects, engine.live.catalog.index, engine.live.clock(), users)
        try:
            if records is None:
                records = service.validate(_validate(_EVENTS, path, numbers, lines))
            else:
                records = service.check(records)
        except InvalidInput as exc:
            raise _located(path, numbers, exc.errors) from None
        result = service.append(records)
        report.events += result.accepted
        report.duplicates += result.duplicates
        if n % CHECKPOINT_EVERY == 0:  # bounds memory: saved state can leave the cache
            engine.checkpoint()
        bar.update(len(numbers))


def load_files(engine: Engine, items: Path | None, events: Path | None, progress: bool = True) -> LoadReport:
    from tqdm import tqdm

    report = LoadReport()
    with tqdm(disable=not progress, unit=" rows", file=sys.stderr, desc="items") as bar:
        if items is not None:
            for numbers, objects in read_jsonl(_ITEMS, items):
                report.items += engine.items.upsert(objects)
                bar.update(len(numbers))
    with tqdm(disable=not progress, unit=" events", file=sys.stderr, desc="events") as bar:
        if events is not None:
            load_events(engine, events, bar, report)
    engine.checkpoint()
    return report
