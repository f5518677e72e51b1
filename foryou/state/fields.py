"""The fields of the engine's derived state in memory, which its parts share: the users' cache
(users.py), the item aggregates (items.py) and their checkpoints (checkpoints.py). `Live` (live.py)
makes them; each part's methods read and write them."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from foryou.catalog import Catalog
from foryou.columns import EventColumns
from foryou.config import Settings
from foryou.interest import UserState
from foryou.policy import Controls, KeywordFilter, Pools
from foryou.state.coengagement import CoEngagement, Positives
from foryou.store import Store
from foryou.store.writer import AggregateWriter
from foryou.trending import Trending
from foryou.types import UserRecord


@dataclass
class LiveUser:
    profile: UserRecord
    state: UserState
    dirty_since: int = 0  # seq of the first logged event not yet in the saved state; 0 when saved
    dirty_at: float = 0.0  # when the state first changed since it was saved (the clock's time)
    stored: bool = True  # False until the profile is written to the store
    serving_loaded: bool = False  # served/viewed items, the last served ones and the controls read
    controls: Controls = field(default_factory=Controls)
    keywords: KeywordFilter | None = None  # the controls' blocked keywords, compiled (feed.py)
    sweep_at: int = -1  # where the next sweep of the catalogue starts (-1: nowhere yet)

    @property
    def dirty(self) -> bool:
        return self.dirty_since > 0



class StateFields:
    """What every part of `Live` holds (see `Live.__init__` for each field's meaning), and the few
    methods one part calls on another."""

    store: Store
    settings: Settings
    clock: Callable[[], float]
    catalog: Catalog
    trending: Trending
    tau: float
    users: OrderedDict[str, LiveUser]
    pending: dict[str, str]
    stored_regions: dict[str, str]
    dirty_items: set[int]
    appended: dict[str, deque[tuple[int, EventColumns]]]
    writer: AggregateWriter | None
    dirty_users: dict[str, dict[str, LiveUser]]
    coeng: CoEngagement
    positives: Positives
    coeng_on: bool
    items_owner: bool
    aggregates_token: str
    event_mark: dict[str, int]
    item_mark: dict[str, int]
    served_mark: dict[str, int]
    last_checkpoint: float
    _totals: np.ndarray
    _in_progress: bool
    _last_purge: float
    pools: Pools
    vocab_saved: dict[str, int]

    def touch(self, live: LiveUser, seq: int = 0) -> None:  # users.py
        raise NotImplementedError

    def _trim(self) -> None:  # users.py
        raise NotImplementedError

    def totals(self) -> np.ndarray:  # items.py
        raise NotImplementedError
