"""The log follower: the one writer of the item aggregates (counters, catalogue-wide sums, trending,
co-engagement) and, in-process, of the learned model. It reads each region's event log in order from
where it stopped, a page at a time; the trainer learns each page first (its examples' item features
as of before them), then the item aggregates move on.

A request that appends events only updates the interest state of its users held in memory
(`Live.apply_user_events`; the others catch up from the log when read), so a user's next feed
reflects what they just did; item-level state and the model follow the log. In the
server the follower runs beside the requests, a bounded page per step of the event loop (`_follow` in
`http/app.py`), and stays within about a second of the log; in-process drivers (tests, `simulate`,
`evaluate`, `load`) follow at once after each append, so a seed still gives the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

from foryou.columns import EventColumns
from foryou.learning import Learner
from foryou.state import Live
from foryou.types import EventRecord

PAGE = 256  # events read and applied at once


class LogFollower:
    def __init__(self, live: Live, learner: Learner | None = None) -> None:
        self.live = live
        self.learner = learner

    def position(self, region: str) -> int:
        """The seq through which both the item aggregates and the model have taken the region's log."""
        mark = self.live.item_mark[region]
        learner = self.learner
        if learner is not None and learner.settings.enabled:
            mark = min(mark, learner.marks[region])
        return mark

    def follow(self, limit: int | None = None) -> bool:
        """Take up to `limit` events of each region's log (all that wait, when None); returns whether
        more wait."""
        live = self.live
        more = False
        for region in live.catalog.regions:
            left = limit
            while left is None or left > 0:
                taken = self.take_page(region, PAGE if left is None else min(PAGE, left))
                if not taken:
                    self._skip_erased(region)
                    break
                if left is not None:
                    left -= taken
            more = more or self.behind(region) > 0
        return more

    def take_page(self, region: str, limit: int = PAGE) -> int:
        """Take the next page of at most `limit` events of the region's log; returns how many. Those
        this process appended are taken as the request kept them (`Items.keep_appended`), not read back."""
        position = self.position(region)
        kept = self.live.appended_after(region, position, limit)
        if kept is not None:
            self._take(region, *kept)
            return len(kept[1])
        page = list(self.live.store.events_after(region, position, limit))
        if page:
            self.take_read(region, page)
        return len(page)

    def take_read(self, region: str, page: Sequence[EventRecord]) -> None:
        """Take a page the caller read from the log after `position(region)`."""
        self._take(region, EventColumns.of(page), [e.seq for e in page], page)

    def take(self, region: str, events: EventColumns, seqs: Sequence[int]) -> None:
        """In-process, right after an append: `events` are the region's log at `seqs` (ascending,
        consecutive). When they are the next the follower needs they are taken as they are, without
        reading them back; otherwise the follower reads the log up to them."""
        if seqs and self.position(region) == seqs[0] - 1:
            self._take(region, events, seqs)
        else:
            self.follow()

    def _take(self, region: str, events: EventColumns, seqs: Sequence[int],
              records: Sequence[EventRecord] | None = None) -> None:
        """The next events of the region's log (`records`: the same, where the caller has them): the
        trainer learns them, then the item aggregates move."""
        learner = self.learner
        if learner is not None and learner.settings.enabled:
            mark = learner.marks[region]
            fresh = [k for k, s in enumerate(seqs) if s > mark]
            if records is None:
                records = events.records(seqs[0])
            learner.learn_many(region, [records[k] for k in fresh], [seqs[k] for k in fresh])
            learner.learned_through(region, seqs[-1])
        self.live.apply_item_events(region, events, seqs)

    def _skip_erased(self, region: str) -> None:
        """The log ends before the last seq this process appended: the events after the follower's
        position were deleted (an erasure of the newest events) before it reached them. Nothing is
        left to take: the position moves to the end, so that the follower does not wait for them."""
        end = self.live.event_mark[region]
        if self.position(region) < end:
            if self.learner is not None and self.learner.settings.enabled:
                self.learner.learned_through(region, end)
            self.live.item_mark[region] = max(self.live.item_mark[region], end)

    def behind(self, region: str) -> int:
        """Events appended to the region's log and not followed yet."""
        return max(self.live.event_mark[region] - self.position(region), 0)
