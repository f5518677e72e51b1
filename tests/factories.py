"""Small builders shared by the unit tests."""

from __future__ import annotations

from foryou.types import ItemRecord

ADMIN_KEY = "test-admin-key-0123456789"  # what the tests' servers get as FORYOU_ADMIN_KEY
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def item(item_id: str, **kw: object) -> ItemRecord:
    """An item record with plain defaults (a 10 s video by its own creator), overridden by `kw`."""
    fields: dict[str, object] = {"creator": "c-" + item_id, "duration_s": 10.0, "created_at": 0.0}
    fields.update(kw)
    return ItemRecord(id=item_id, **fields)  # type: ignore[arg-type]


class Clock:
    """A settable clock for engines run in test time."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
