"""The catalogue service: upsert, read with live counters, take down, restore."""

from __future__ import annotations

from collections.abc import Sequence

from foryou.errors import NotFound
from foryou.live import Live
from foryou.types import ItemIn, ItemRecord


class ItemService:
    def __init__(self, live: Live) -> None:
        self.live = live

    def upsert(self, items: Sequence[ItemIn]) -> int:
        """Replace fields by id; counters, takedown state and (when omitted) created_at are kept."""
        live = self.live
        now = live.clock()
        latest: dict[str, ItemRecord] = {}
        for it in items:  # the last of repeated ids in one batch wins
            idx = live.catalog.index.get(it.id)
            previous = latest.get(it.id)
            if it.created_at is not None:
                created = it.created_at
            elif previous is not None:
                created = previous.created_at
            elif idx is not None:
                created = float(live.catalog.created_at[idx])
            else:
                created = now
            down = previous.down if previous else (idx is not None and not bool(live.catalog.alive[idx]))
            latest[it.id] = ItemRecord(
                id=it.id, creator=it.creator, duration_s=it.duration_s, created_at=created,
                caption=it.caption, tags=tuple(it.tags), topic=it.topic, sound=it.sound, lang=it.lang,
                regions=tuple(it.regions) if it.regions is not None else None, mature=it.mature, down=down,
            )
        records = list(latest.values())
        live.store.upsert_items(records)
        live.catalog.put_many(records)
        live.trending.ensure(len(live.catalog))
        return len(items)

    def get(self, item_id: str) -> dict[str, object]:
        record = self.live.store.get_item(item_id)
        idx = self.live.catalog.index.get(item_id)
        if record is None or idx is None:
            raise NotFound(f"unknown item {item_id!r}", field="id")
        out = record.public()
        out["stats"] = self.live.catalog.stats_of(idx)
        return out

    def set_down(self, item_id: str, down: bool) -> dict[str, object]:
        """Take an item down (never served again) or restore it."""
        record = self.live.store.get_item(item_id)
        if record is None:
            raise NotFound(f"unknown item {item_id!r}", field="id")
        record.down = down
        self.live.store.upsert_items([record])
        self.live.catalog.put(record)
        return {"id": item_id, "taken_down": down}
