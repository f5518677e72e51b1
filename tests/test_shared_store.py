"""Two servers on one store, as scale-out runs them (issue 15 puts Redis under the same code): any
server may answer any user, because each write about a user raises the user's version and a server's
cached user is read again when the version moved under it; a feed is recorded with a compare-and-set.
Here both engines share one `memory://` store in this process."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import Clock

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.errors import Gone
from foryou.interest import UserState
from foryou.types import ControlsIn, EventIn, ItemIn, format_time

T0 = 1_700_000_000.0
_names = itertools.count()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    url = f"memory://shared-{next(_names)}"
    opened = []
    for k in range(2):
        # one privacy secret, as servers sharing a store must have: it keys the idempotency keys' hashes
        settings = load_settings(overrides={"server.data": str(tmp_path / f"server{k}"), "learning.enabled": False,
                                            "privacy.secret": "5e" * 32}, env={})
        engine = Engine.open(settings, clock=Clock(T0), store_url=url, seed=k)
        if k == 0:  # the catalogue first, so that both load it
            engine.items.upsert([ItemIn(id=f"v{i}", creator=f"c{i % 4}", duration_s=10.0, tags=[f"t{i % 5}"],
                                        caption=f"clip {i} of creator {i % 4}", created_at=format_time(T0 - 3600))
                                 for i in range(120)])
        opened.append(engine)
    a, b = opened
    b.live.catalog.put_many(b.store.iter_items())
    b.live.trending.ensure(len(b.live.catalog))
    yield a, b
    for engine in opened:
        engine.close()


def test_feeds_fetched_alternately_from_two_servers_never_repeat_an_item(pair: tuple[Engine, Engine]) -> None:
    a, b = pair
    served: list[str] = []
    for k in range(20):  # each server's cached user is stale at every turn but the first
        served += [i.id for i in (a if k % 2 == 0 else b).feeds.feed("amy", 5).items]
    assert len(served) == 100
    assert len(set(served)) == len(served)


def test_an_event_posted_to_one_server_shapes_the_next_feed_from_the_other(pair: tuple[Engine, Engine]) -> None:
    a, b = pair
    first = b.feeds.feed("amy", 10).items  # b caches amy
    creator = {f"v{i}": f"c{i % 4}" for i in range(120)}
    muted = creator[first[0].id]
    a.events.ingest([EventIn(user="amy", item=first[0].id, type="not_interested", id="e1")])
    for _ in range(4):
        assert not [i.id for i in b.feeds.feed("amy", 10).items if creator[i.id] == muted]
    # and the other way: what b applies, a's cached user takes in too
    a.feeds.feed("amy", 5)  # a caches amy, with a's own event caught up from the log
    b.events.ingest([EventIn(user="amy", item=i.id, type="view", watch_s=10.0, id=f"w{k}")
                     for k, i in enumerate(first)])
    state = a.live.users["amy"].state
    a.feeds.feed("amy", 5)
    assert a.live.users["amy"].state.seq > state.seq == 1


def test_controls_set_on_one_server_apply_on_the_other(pair: tuple[Engine, Engine]) -> None:
    a, b = pair
    b.feeds.feed("amy", 5)
    a.users.set_controls("amy", ControlsIn(blocked_keywords=["creator 2"]))
    for _ in range(5):
        assert not [i for i in b.feeds.feed("amy", 10).items if int(i.id[1:]) % 4 == 2]
    assert b.users.controls("amy")["blocked_keywords"] == ["creator 2"]


def test_a_users_state_on_either_server_is_the_fold_of_the_whole_log(pair: tuple[Engine, Engine]) -> None:
    a, b = pair
    for k in range(30):  # a user's events split between the servers, feeds between them too
        server = b if k % 3 == 0 else a
        server.events.ingest([EventIn(user="amy", item=f"v{k}", type="like", id=f"e{k}")])
        truth = UserState()
        server.live.catch_up(truth, server.store.get_user("us", "amy"))  # type: ignore[arg-type]
        state = server.live.user("amy").state  # held (applied by this ingest), or read (caught up)
        assert state.seq == truth.seq == k + 1
        assert state.weights == pytest.approx(truth.weights) and state.recent == truth.recent
        (b if k % 2 else a).feeds.feed("amy", 3)


def test_a_user_erased_on_one_server_is_gone_on_the_other(pair: tuple[Engine, Engine]) -> None:
    a, b = pair
    b.feeds.feed("amy", 5)
    a.events.ingest([EventIn(user="amy", item="v1", type="like", id="e1")])
    a.erasure.erase("amy")
    with pytest.raises(Gone):
        b.feeds.feed("amy", 5)
    assert "amy" not in b.live.users and a.store.get_user("us", "amy") is None


def test_an_event_id_sent_to_both_servers_is_recorded_once(pair: tuple[Engine, Engine]) -> None:
    """The duplicate check runs inside the append's transaction: the second server's copy of a batch
    (a client retrying against another server) counts as a duplicate, neither a second event nor a 409."""
    a, b = pair
    batch = [EventIn(user="amy", item="v1", type="like", id="once"), EventIn(user="amy", item="v2", type="like")]
    first, again = a.events.ingest(batch), b.events.ingest(batch)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (1, 1)  # the event without an id is another event
    assert [e.item for e in a.store.user_events("us", "amy")] == ["v1", "v2", "v2"]
