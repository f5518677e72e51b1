"""A batch of events as columns: what ingestion validates, appends and counts, a list or an array per
field instead of an object per event (the bulk loader's 5M events and the API's batches of 1,000 pay
per event only for what cannot be vectorised). `records()` gives the objects back where a consumer
needs them (the users in memory, the in-process trainer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foryou.types import EventRecord


@dataclass(frozen=True, eq=False)  # compare `records()`
class EventColumns:
    user: list[str]
    item: list[str]
    type: list[str]
    watch_s: np.ndarray  # float64
    ts: np.ndarray  # float64, epoch seconds
    id: list[str | None]
    request_id: list[str | None]

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def of(cls, records: Sequence[EventRecord]) -> EventColumns:
        n = len(records)
        return cls([e.user for e in records], [e.item for e in records], [e.type for e in records],
                   np.fromiter((e.watch_s for e in records), np.float64, n),
                   np.fromiter((e.ts for e in records), np.float64, n),
                   [e.id for e in records], [e.request_id for e in records])

    def records(self, first_seq: int = 0, positions: Sequence[int] | None = None) -> list[EventRecord]:
        """The events as records, with seqs from `first_seq` (0: none); `positions`: only those."""
        seqs = range(first_seq, first_seq + len(self)) if first_seq else [0] * len(self)
        if positions is None:
            return list(map(EventRecord, self.user, self.item, self.type, self.watch_s.tolist(), self.ts.tolist(),
                            self.id, self.request_id, seqs))
        watch, ts = self.watch_s.tolist(), self.ts.tolist()
        return [EventRecord(self.user[k], self.item[k], self.type[k], watch[k], ts[k], self.id[k],
                            self.request_id[k], seqs[k]) for k in positions]

    def take(self, positions: Sequence[int]) -> EventColumns:
        """The events at `positions`, in that order."""
        at = np.asarray(positions, np.int64)
        return EventColumns([self.user[k] for k in positions], [self.item[k] for k in positions],
                            [self.type[k] for k in positions], self.watch_s[at], self.ts[at],
                            [self.id[k] for k in positions], [self.request_id[k] for k in positions])

    def split(self, size: int) -> list[EventColumns]:
        """Consecutive parts of at most `size` events."""
        if len(self) <= size:
            return [self]
        return [self.take(range(lo, min(lo + size, len(self)))) for lo in range(0, len(self), size)]

    def item_codes(self, index: Mapping[str, int]) -> np.ndarray:
        """Each event's item code under `index`, -1 where the item is not in it."""
        get = index.get
        return np.fromiter((get(i, -1) for i in self.item), np.int64, len(self))
