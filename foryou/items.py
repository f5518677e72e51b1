"""The catalogue service: upsert, read with live counters, take down, restore."""

from __future__ import annotations

from collections.abc import Sequence

from foryou.errors import FieldError, InvalidInput, NotFound
from foryou.follower import LogFollower
from foryou.learning import Learner
from foryou.state import Live
from foryou.types import ItemIn, ItemRecord, parse_time


class ItemService:
    def __init__(self, live: Live, learner: Learner | None = None, follower: LogFollower | None = None) -> None:
        self.live = live
        self.learner = learner
        self.follower = follower

    def upsert(self, items: Sequence[ItemIn]) -> int:
        """Replace fields by id; counters, takedown state and (when omitted) created_at are kept."""
        live = self.live
        now = live.clock()
        errors = []
        for i, it in enumerate(items):
            if it.created_at is not None:
                try:
                    parse_time(it.created_at, checked=True)
                except ValueError as exc:
                    errors.append(FieldError("created_at", str(exc), i))
        if errors:
            raise InvalidInput(errors)
        latest: dict[str, ItemRecord] = {}
        for it in items:  # the last of repeated ids in one batch wins
            idx = live.catalog.index.get(it.id)
            previous = latest.get(it.id)
            if it.created_at is not None:
                created = parse_time(it.created_at, checked=True)
            elif previous is not None:
                created = previous.created_at
            elif idx is not None:
                created = float(live.catalog.created_at[idx])
            else:
                created = now
            down = previous.down if previous else (idx is not None and not bool(live.catalog.alive[idx]))
            latest[it.id] = ItemRecord(
                id=it.id, creator=it.creator, duration_s=it.duration_s, created_at=created,
                caption=it.caption, tags=tuple(it.tags), sound=it.sound, lang=it.lang,
                topic=it.topic if it.topic is not None else (it.tags[0] if it.tags else None),
                regions=tuple(it.regions) if it.regions is not None else None, mature=it.mature, down=down,
            )
        records = list(latest.values())
        if any(self._learning_changed(r) for r in records):
            # The events logged before the change are counted and learned with the item as it was:
            # the log follower takes them first (a rare catalogue change waits for it), and the derived
            # state is saved, so that no replay after a crash crosses the change either.
            if self.follower is not None:
                self.follower.follow()
            live.checkpoint()
        live.store.upsert_items(records)
        before = len(live.catalog)
        live.catalog.put_many(records)
        live.trending.ensure(len(live.catalog))
        # New videos join the first exposure pool; the pool is persisted with the item's counters.
        live.dirty_items.update(live.pools.admit(live.catalog, list(range(before, len(live.catalog))), now))
        self._changed(records)
        return len(items)

    def _changed(self, records: Sequence[ItemRecord]) -> None:
        """New, changed and taken-down items get their vector (re)indexed, or removed."""
        if self.learner is not None:
            index = self.live.catalog.index
            self.learner.items_changed([index[r.id] for r in records])

    def _learning_changed(self, record: ItemRecord) -> bool:
        """Whether an upsert changes what learning from an existing item's events depends on."""
        catalog = self.live.catalog
        idx = catalog.index.get(record.id)
        if idx is None:
            return False
        topic = record.topic if record.topic is not None else (record.tags[0] if record.tags else None)
        return (catalog.duration_l[idx] != record.duration_s
                or catalog.creators.names[catalog.creator_l[idx]] != record.creator
                or (catalog.sounds.names[catalog.sound_l[idx]] if catalog.sound_l[idx] >= 0 else None) != record.sound
                or [catalog.tags.names[t] for t in catalog.item_tags[idx]] != list(dict.fromkeys(record.tags))
                or (catalog.tags.names[catalog.topic_l[idx]] if catalog.topic_l[idx] >= 0 else None) != topic)

    def get(self, item_id: str) -> dict[str, object]:
        record = self.live.store.get_item(item_id)
        idx = self.live.catalog.index.get(item_id)
        if record is None or idx is None:
            raise NotFound(f"unknown item {item_id!r}", field="id")
        out = record.public()
        out["stats"] = self.live.catalog.stats_of(idx)
        out["exposure"] = self.live.pools.exposure(self.live.catalog, idx)
        return out

    def set_down(self, item_id: str, down: bool) -> dict[str, object]:
        """Take an item down (never served again) or restore it."""
        record = self.live.store.get_item(item_id)
        if record is None:
            raise NotFound(f"unknown item {item_id!r}", field="id")
        record.down = down
        self.live.store.upsert_items([record])
        self.live.catalog.put(record)
        self._changed([record])
        return {"id": item_id, "taken_down": down}
