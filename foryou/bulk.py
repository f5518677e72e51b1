"""Bulk import of JSON Lines files (Item and Event objects, one per line), validated like the API and
applied in batches of up to 10,000. A bad line stops the import with its line number; the batches
before it are kept (each batch is all-or-nothing).

Events take a path of their own: a batch is parsed once (orjson) and checked column by column against
the API's rules (`ingest.plain_events`, as `POST /v1/events` does), which accepts
only the plain shapes and hands anything else to the API's own validation (pydantic), so that a bad
line gets exactly the API's error."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from foryou.engine import Engine
from foryou.errors import FieldError, InvalidInput
from foryou.http.errors import field_error
from foryou.ingest import plain_events
from foryou.types import EventIn, ItemIn

BATCH = 10_000
# Batches between checkpoints: each rewrites the item aggregates' rows the batches touched (at 1M items
# ~150,000 random rows per 200,000 events), so fewer are faster (1M events at 1M items: 44.0 s every 20
# batches, 35.8 s every 100); a crash replays what came after the last one at the next start.
CHECKPOINT_EVERY = 100
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


def _parsed(lines: list[bytes]) -> list[Any] | None:
    """The batch's JSON values, or None where a line is not JSON (the API's validation says which)."""
    try:
        return orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError:
        return None


def load_events(engine: Engine, path: Path, bar: Any, report: LoadReport) -> None:
    """Load an events file, a batch at a time (`plain_events`, else the API's validation)."""
    users: set[str] = set()
    service = engine.events
    for n, (numbers, lines) in enumerate(_batches(path), 1):
        objects = _parsed(lines)
        events = None
        if objects is not None:
            events = plain_events(objects, engine.live.catalog.index, engine.live.clock(), users)
        try:
            if events is None:
                events = service.validate(_validate(_EVENTS, path, numbers, lines))
            else:
                events = service.check(events)
        except InvalidInput as exc:
            raise _located(path, numbers, exc.errors) from None
        result = service.append(events, hold_new=False)  # users take their events in when first read
        report.events += result.accepted
        report.duplicates += result.duplicates
        if n % CHECKPOINT_EVERY == 0:  # bounds the replay after a crash
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
