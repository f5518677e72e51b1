"""Training examples from the event stream, and the join buffers that wait for delayed labels.

What a view says (completion, watch quantile, early skip) is known at once; whether the user then
liked, commented, shared or followed is known only after the join window, so a view's action labels
wait here, keyed by (user, item); a served item with no view by then becomes an impression without a
play. The buffers are in time order, so closing the expired joins stops at the first open one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from foryou.learning.features import ACTION_HEADS, HEAD, HEADS, VIEW_HEADS
from foryou.learning.model import Examples
from foryou.types import EventRecord

H = len(HEADS)
NEGATIVE_EVENTS = ("not_interested", "report")


class ExampleList:
    """Examples gathered from one batch of events: (region, user, item, label bits, mask bits,
    retrieval label) tuples, with bits as 1 << head, turned into arrays once per batch."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int, int, int, int]] = []
        self.add = self.rows.append  # the hot loop appends tuples: no call of ours per example

    def build(self) -> Examples:
        if not self.rows:
            z = np.zeros((0, H))
            return Examples([], [], np.zeros(0, np.int64), z.astype(np.float32), z.astype(np.bool_),
                            np.zeros(0, np.int64))
        regions, users, items, labels, masks, retrieval = zip(*self.rows, strict=True)
        heads = np.arange(H)
        label_bits = (np.array(labels, np.int64)[:, None] >> heads) & 1
        mask_bits = (np.array(masks, np.int64)[:, None] >> heads) & 1
        return Examples(list(regions), list(users), np.array(items, np.int64), label_bits.astype(np.float32),
                        mask_bits.astype(np.bool_), np.array(retrieval, np.int64))


def _bits(heads: Sequence[int]) -> int:
    return sum(1 << h for h in heads)


_VIEW_MASK = _bits(VIEW_HEADS)
_ACTION_MASK = _bits(tuple(ACTION_HEADS.values()))
_NO_PLAY_MASK = _bits([HEAD["complete"], HEAD["skip"], *ACTION_HEADS.values()])
_NO_PLAY_LABELS = 1 << HEAD["skip"]


class Joins:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        # Oldest first: (user, item) -> [time, region, bits of the actions seen].
        self.views: OrderedDict[tuple[str, int], list[object]] = OrderedDict()
        self.served: OrderedDict[tuple[str, int], tuple[float, str]] = OrderedDict()

    def add_events(self, region: str, events: Sequence[EventRecord], index: Mapping[str, int],
                   out: ExampleList) -> tuple[list[int], list[float]]:
        """Examples of `events` into `out` (views' labels other than the actions' still to fill in);
        returns where the views are among them and their watch times."""
        add, views, served = out.add, self.views, self.served
        view_at: list[int] = []
        watch: list[float] = []
        for e in events:
            i = index.get(e.item)
            if i is None:
                continue
            key = (e.user, i)
            if e.type == "view":
                served.pop(key, None)
                if key in views:  # a repeat view restarts the join (at the end: the buffer stays in time order)
                    del views[key]
                views[key] = [e.ts, region, 0]
                view_at.append(len(out.rows))
                watch.append(e.watch_s)
                add((region, e.user, i, 0, _VIEW_MASK, -1))
            elif e.type in ACTION_HEADS:
                head = ACTION_HEADS[e.type]
                pending = views.get(key)
                if pending is not None:
                    pending[2] = int(pending[2]) | (1 << head)  # type: ignore[call-overload]
                    add((region, e.user, i, 0, 0, 1))
                else:
                    add((region, e.user, i, 1 << head, 1 << head, 1))
            elif e.type in NEGATIVE_EVENTS:
                add((region, e.user, i, 0, 0, 0))
        return view_at, watch

    def add_served(self, region: str, user: str, items: Sequence[int], now: float) -> None:
        for i in items:
            self.served[(user, i)] = (now, region)
            self.served.move_to_end((user, i))

    def forget(self, user: str) -> None:
        """Drop the user's open joins (a refresh or an erasure: they must not be learned later)."""
        for buffer in (self.views, self.served):
            for key in [k for k in buffer if k[0] == user]:
                del buffer[key]

    def close(self, now: float, out: ExampleList) -> None:
        """Examples of the joins whose window closed by `now`: views with their action labels, and
        served items never viewed (impressions without a play)."""
        cutoff = now - self.window_s
        closed: list[tuple[str, int]] = []
        for (user, i), (ts, region, bits) in self.views.items():
            if float(ts) > cutoff:  # type: ignore[arg-type]
                break
            closed.append((user, i))
            out.add((str(region), user, i, int(bits), _ACTION_MASK, -1))  # type: ignore[call-overload]
        for key in closed:
            del self.views[key]
        closed = []
        for (user, i), (ts, region) in self.served.items():
            if ts > cutoff:
                break
            closed.append((user, i))
            out.add((region, user, i, _NO_PLAY_LABELS, _NO_PLAY_MASK, -1))
        for key in closed:
            del self.served[key]
