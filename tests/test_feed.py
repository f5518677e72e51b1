"""The feed, end to end in process: the engine with a fake clock on a temporary data directory.

Worlds are small and synthetic, so every expected answer is known by construction."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from factories import Clock

from foryou.config import load_settings
from foryou.engine import Engine
from foryou.interest import decay, dumps_json
from foryou.types import STAT_NAMES, EventIn, ItemIn, UserIn, format_time

T0 = 1_700_000_000.0
DAY = 86400.0




# These tests are of ranking and the adjacency rule: the rest of feed policy (new-video pools,
# exploration, topic runs, similarity) is off here and tested in tests/test_feed_policy.py.
PLAIN_POLICY = {"policy.explore_share": 0.0, "policy.pool_share": 0.0, "policy.mmr_lambda": 0.0,
                "policy.topic_run_cap": 1000, "policy.sensitive_topics": ""}


class Engines:
    """Opens engines on one data directory; closes (or, for a simulated crash, abandons) them at the end."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.open_: list[Engine] = []
        self.crashed: list[Engine] = []

    def open(self, regions: str = "us,eu", **overrides: object) -> Engine:
        settings = load_settings(overrides={"server.data": str(self.path), "server.regions": regions,
                                            **PLAIN_POLICY, **overrides}, env={})
        engine = Engine.open(settings, clock=self.clock, seed=0)
        self.open_.append(engine)
        return engine

    def close(self, engine: Engine) -> None:
        self.open_.remove(engine)
        engine.close()

    def crash(self, engine: Engine) -> None:
        """The process dies: no checkpoint. (Its connections stay open until the test ends, as a dead
        process's would be released by the OS; committed rows are already durable.)"""
        self.open_.remove(engine)
        self.crashed.append(engine)

    def finish(self) -> None:
        for engine in self.open_:
            engine.close()
        for engine in self.crashed:
            engine.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def engines(tmp_path: Path, clock: Clock) -> Iterator[Engines]:
    e = Engines(tmp_path / "data", clock)
    yield e
    e.finish()


def item(item_id: str, creator: str, topic: str, *, duration: float = 20.0, sound: str | None = None,
         age_days: float = 10.0, regions: list[str] | None = None, mature: bool = False) -> ItemIn:
    return ItemIn(id=item_id, creator=creator, duration_s=duration, tags=[topic], topic=topic, sound=sound,
                  created_at=format_time(T0 - age_days * DAY), regions=regions, mature=mature)


def simple_world(n: int = 30, topics: int = 3, creators: int = 10) -> list[ItemIn]:
    return [item(f"i{k:03d}", f"c{k % creators}", f"t{k % topics}", sound=f"s{k % 4}") for k in range(n)]


def view(user: str, item_id: str, watch: float) -> EventIn:
    return EventIn(user=user, item=item_id, type="view", watch_s=watch)


def feed_ids(engine: Engine, user: str, n: int = 10) -> list[str]:
    return [i.id for i in engine.feeds.feed(user, n).items]


def drain(engine: Engine, user: str, n: int = 7, limit: int = 200) -> list[str]:
    """Everything the user can still be served, request after request, until the feed runs dry."""
    out: list[str] = []
    for _ in range(limit):
        got = feed_ids(engine, user, n)
        if not got:
            return out
        out += got
    raise AssertionError("the feed never ran dry")


def topic_of(engine: Engine, item_id: str) -> str:
    return str(engine.items.get(item_id)["topic"])


# -- never again, never where not allowed ------------------------------------------------------------------


def test_no_repeats_ever(engines: Engines) -> None:
    e = engines.open()
    world = simple_world(40)
    e.items.upsert(world)
    e.events.ingest([view("u", "i005", 20.0), view("u", "i006", 1.0)])  # viewed without being served
    served = drain(e, "u", n=6)
    assert len(served) == len(set(served)), Counter(served).most_common(3)
    assert set(served) == {i.id for i in world} - {"i005", "i006"}
    assert feed_ids(e, "u") == []


def test_served_set_is_per_user(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(12))
    assert len(drain(e, "a")) == 12
    assert len(drain(e, "b")) == 12


def test_taken_down_items_are_never_served(engines: Engines) -> None:
    e = engines.open()
    world = simple_world(30)
    e.items.upsert(world)
    # make the soon-to-be-removed items attractive: others finish them (trending) and "u" likes their topic
    e.events.ingest([view("fan", "i000", 20.0), view("fan", "i003", 20.0), view("u", "i006", 20.0),
                     view("u", "i009", 20.0)])
    down = {"i000", "i003", "i012", "i015", "i018"}  # topic t0, like everything "u" finished
    for item_id in down:
        e.items.set_down(item_id, True)
    first = feed_ids(e, "u", 5)
    assert len(first) == 5 and not down & set(first)
    later = next(i.id for i in world if i.id not in first and i.id not in down and i.id not in ("i006", "i009"))
    e.items.set_down(later, True)  # taken down between requests
    rest = drain(e, "u")
    assert not (down | {later}) & set(first + rest)
    assert set(first + rest) == {i.id for i in world} - down - {later, "i006", "i009"}


def test_restored_item_is_served_again(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(10))
    e.items.set_down("i004", True)
    served = drain(e, "u")
    assert "i004" not in served and len(served) == 9
    e.items.set_down("i004", False)
    assert feed_ids(e, "u") == ["i004"]


def test_upsert_does_not_undo_a_takedown(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(6))
    e.items.set_down("i002", True)
    e.items.upsert([item("i002", "c2", "t2", duration=30.0)])  # a metadata update
    assert "i002" not in drain(e, "u")


def test_region_restricted_items(engines: Engines) -> None:
    e = engines.open(regions="us,eu")
    e.items.upsert([
        item("any1", "c1", "t"), item("any2", "c2", "t"),
        item("us1", "c3", "t", regions=["us"]), item("us2", "c4", "t", regions=["us"]),
        item("eu1", "c5", "t", regions=["eu"]), item("both", "c6", "t", regions=["eu", "us"]),
        item("jp1", "c7", "t", regions=["jp"]), item("none", "c8", "t", regions=[]),
    ])
    e.users.put("ann", UserIn(region="us"))
    e.users.put("eve", UserIn(region="eu"))
    # "eu1" and "jp1" are popular (finished by a us user), and still not for "ann"
    e.events.ingest([view("fan", "eu1", 20.0), view("fan", "jp1", 20.0), view("fan", "us1", 20.0)])
    assert sorted(drain(e, "ann", n=3)) == ["any1", "any2", "both", "us1", "us2"]
    assert sorted(drain(e, "eve", n=3)) == ["any1", "any2", "both", "eu1"]
    assert sorted(drain(e, "newbie", n=3)) == ["any1", "any2", "both", "us1", "us2"]  # default region: us


@pytest.mark.parametrize(("age_band", "adult"), [(None, False), ("under13", False), ("13-17", False), ("18+", True)])
def test_mature_only_for_adults(engines: Engines, age_band: str | None, adult: bool) -> None:
    e = engines.open()
    e.items.upsert([item(f"m{k}", f"c{k}", "t", mature=True) for k in range(4)]
                   + [item(f"g{k}", f"d{k}", "t") for k in range(6)])
    e.events.ingest([view("fan", "m0", 20.0), view("fan", "m1", 20.0)])  # trending mature items
    e.users.put("u", UserIn(age_band=age_band))  # type: ignore[arg-type]
    served = drain(e, "u", n=4)
    mature = {f"m{k}" for k in range(4)}
    general = {f"g{k}" for k in range(6)}
    assert set(served) == (general | mature if adult else general)


def test_feed_runs_dry_gracefully(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(5))
    feeds = [e.feeds.feed("u", 3) for _ in range(4)]
    assert [len(f.items) for f in feeds] == [3, 2, 0, 0]
    assert all(f.request_id for f in feeds) and len({f.request_id for f in feeds}) == 4
    assert feeds[3].as_dict()["items"] == []


def test_empty_catalogue(engines: Engines) -> None:
    e = engines.open()
    assert feed_ids(e, "u") == []


def test_feed_items_carry_scores_and_reasons(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(20))
    f = e.feeds.feed("u", 5)
    assert len(f.items) == 5
    for it in f.items:
        assert isinstance(it.score, float) and math.isfinite(it.score)  # a log-scale value
        assert 1 <= len(it.reasons) <= 3 and all(isinstance(r, str) and r for r in it.reasons)
    scores = [it.score for it in f.items]
    assert len(scores) == 5


def test_served_counter(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(6))
    served = feed_ids(e, "a", 4) + feed_ids(e, "b", 3)
    counts = Counter(served)
    for k in range(6):
        item_id = f"i{k:03d}"
        assert e.items.get(item_id)["stats"]["served"] == counts[item_id]  # type: ignore[index]


# -- the adjacency rule across responses ---------------------------------------------------------------------


def _creator_world() -> list[ItemIn]:
    # creator "star" has 8 videos on the user's favourite topic; 8 others have one each on other topics
    return ([item(f"star{k}", "star", "fav") for k in range(8)]
            + [item(f"o{k}", f"other{k}", f"topic{k}") for k in range(8)] + [item("seed", "someone", "fav")])


def _assert_no_adjacent_creator(e: Engine, sequence: list[str]) -> None:
    creators = [e.items.get(i)["creator"] for i in sequence]
    for prev, cur in itertools.pairwise(creators):
        assert prev != cur or cur != "star", creators


def test_adjacency_across_single_item_responses(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(_creator_world())
    e.events.ingest([view("u", "seed", 20.0), EventIn(user="u", item="star0", type="follow")])
    one_by_one = [feed_ids(e, "u", 1)[0] for _ in range(10)]
    assert sum(i.startswith("star") for i in one_by_one) >= 3  # "star" is preferred...
    _assert_no_adjacent_creator(e, one_by_one)  # ...but never twice in a row


@pytest.mark.parametrize("crash", [False, True])
def test_adjacency_across_a_restart(engines: Engines, clock: Clock, crash: bool) -> None:
    e = engines.open()
    e.items.upsert(_creator_world())
    e.events.ingest([view("u", "seed", 20.0), EventIn(user="u", item="star0", type="follow")])
    before = feed_ids(e, "u", 1)
    assert before[0].startswith("star")  # the best item is by "star"
    if crash:
        engines.crash(e)
    else:
        engines.close(e)
    clock.advance(1)
    e = engines.open()
    after = feed_ids(e, "u", 1)
    _assert_no_adjacent_creator(e, before + after)


# -- learning from events: the yardstick ---------------------------------------------------------------------


TOPICS = [f"topic{k:02d}" for k in range(30)]


def big_world() -> list[ItemIn]:
    """30 topics x 20 videos, interleaved; 150 creators with 4 videos each across topics; 40 sounds."""
    out = []
    for n in range(600):
        topic = TOPICS[n % 30]
        out.append(item(f"v{n:04d}", f"cr{(n * 7) % 150}", topic, sound=f"snd{n % 40}",
                        age_days=3 + (n % 50) / 10))
    return out


def test_yardstick_learns_from_the_very_next_request(engines: Engines, clock: Clock) -> None:
    e = engines.open()
    world = big_world()
    e.items.upsert(world)
    liked, disliked = "topic17", "topic04"
    cold = feed_ids(e, "u", 10)
    assert len(cold) == 10
    assert sum(topic_of(e, i) == liked for i in cold) < 4  # no bias before the events
    unseen = [i for i in world if i.id not in cold]
    good = [i.id for i in unseen if i.topic == liked][:6]
    bad = [i.id for i in unseen if i.topic == disliked][:12]
    assert len(good) == 6 and len(bad) == 12
    clock.advance(30)
    events = [view("u", i, 20.0) for i in good] + [view("u", i, 0.5) for i in bad]
    events = [events[k] for k in (0, 6, 7, 1, 8, 9, 2, 10, 11, 3, 12, 13, 4, 14, 15, 5, 16, 17)]  # interleaved
    assert e.events.ingest(events).accepted == 18
    clock.advance(1)
    nxt = feed_ids(e, "u", 10)
    topics = Counter(topic_of(e, i) for i in nxt)
    assert len(nxt) == 10
    assert topics[liked] >= 4, topics
    assert topics[disliked] <= 1, topics
    assert not set(nxt) & set(good + bad + cold)


def test_early_swipes_push_a_topic_down(engines: Engines) -> None:
    e = engines.open()
    world = [item(f"a{k}", f"ca{k}", "A") for k in range(20)] + [item(f"b{k}", f"cb{k}", "B") for k in range(20)]
    e.items.upsert(world)
    e.events.ingest([view("u", f"a{k}", 0.5) for k in range(5)])
    nxt = feed_ids(e, "u", 10)
    assert sum(i.startswith("b") for i in nxt) >= 9, nxt


# -- restart and crash ----------------------------------------------------------------------------------------


def snapshot(e: Engine, users: list[str]) -> dict[str, object]:
    live, cat = e.live, e.live.catalog
    now = T0 + DAY  # decayed values are compared at one fixed time, whatever the clock says
    out: dict[str, object] = {
        "stats": {cat.ids[i]: cat.stats[i].tolist() for i in range(len(cat))},
        "public_stats": {cat.ids[i]: e.items.get(cat.ids[i])["stats"] for i in range(len(cat))},
        "trend": {r: {cat.ids[i]: pytest.approx(float(s) * math.exp((live.trending.t0 - now) / live.trending.tau),
                                                rel=1e-9, abs=1e-12)
                      for i, s in enumerate(live.trending.scores[r][: len(cat)]) if s != 0}
                  for r in cat.regions},
    }
    for u in users:
        lu = live.serving(live.user(u))
        data = orjson.loads(dumps_json(lu.state, cat))
        factor = decay(lu.state, now, live.tau)
        out[f"weights:{u}"] = {k: pytest.approx(w * factor, rel=1e-9, abs=1e-12) for k, w in _flat(data["w"]).items()
                               if abs(w * factor) > 1e-9}
        out[f"follows:{u}"] = sorted(data["follows"])
        out[f"recent:{u}"] = data["recent"]
        out[f"excluded:{u}"] = sorted(cat.ids[i] for i in lu.state.excluded)
        out[f"region:{u}"] = lu.profile.region
    return out


def _flat(grouped: dict[str, dict[str, float]]) -> dict[str, float]:
    """Saved weights are grouped by kind (t, o, c, s); key them as `kind:name`."""
    return {f"{kind}:{name}": w for kind, group in grouped.items() for name, w in group.items()}


def coengagement(e: Engine) -> dict[tuple[str, str], float]:
    """Each item's co-engaged items and counts, as held (saved rows are loaded at a start)."""
    ids, coeng = e.live.catalog.ids, e.live.coeng
    return {(ids[a], ids[int(b)]): float(w) for a in range(min(len(ids), len(coeng.nb)))
            for b, w in zip(coeng.nb[a], coeng.w[a], strict=True) if b >= 0}


def _activity(e: Engine, clock: Clock, checkpoint_midway: bool) -> dict[str, int]:
    """A fixed script of activity for "ann" (us), "bob" (eu) and "cid" (created by an event);
    returns what it did, counted by construction."""
    e.items.upsert(simple_world(60, topics=4, creators=12))
    e.users.put("bob", UserIn(region="eu"))
    e.users.put("ann", UserIn(region="us", age_band="18+"))
    done = Counter[str]()  # the checkpoint interval is 5 s: the clock moves less than that, except midway

    def ingest(events: list[EventIn]) -> None:
        e.events.ingest(events)
        for ev in events:
            done[ev.type] += 1

    def serve(user: str, n: int) -> None:
        done["served"] += len(feed_ids(e, user, n))

    clock.advance(1)
    ingest([view("ann", "i000", 20.0), view("ann", "i004", 20.0), view("bob", "i001", 0.5),
            EventIn(user="ann", item="i008", type="like"), EventIn(user="cid", item="i002", type="share")])
    serve("ann", 5)
    serve("bob", 4)
    clock.advance(10 if checkpoint_midway else 1)  # past the 5 s checkpoint interval, or not
    e.tick(clock())  # the periodic work, as a server runs it between requests
    ingest([view("ann", "i012", 20.0), view("bob", "i005", 19.0), EventIn(user="bob", item="i005", type="follow"),
            view("cid", "i003", 3.0), EventIn(user="ann", item="i001", type="not_interested")])
    clock.advance(1)
    serve("ann", 6)
    serve("cid", 3)
    ingest([view("ann", "i016", 20.0), view("ann", "i020", 25.0), view("bob", "i009", 1.0),
            EventIn(user="bob", item="i013", type="comment"), EventIn(user="ann", item="i002", type="report")])
    serve("bob", 2)
    return dict(done)


def _check_counts(e: Engine, done: dict[str, int]) -> None:
    totals = Counter[str]()
    for item_id in e.live.catalog.ids:
        for name, v in e.items.get(item_id)["stats"].items():  # type: ignore[attr-defined]
            totals[name] += v
    assert totals["views"] == done["view"] == 9
    assert totals["served"] == done["served"] == 20
    assert totals["likes"] == 1 and totals["shares"] == 1 and totals["follows"] == 1
    assert totals["comments"] == 1 and totals["not_interested"] == 1 and totals["reports"] == 1
    assert totals["completions"] == 6  # ann: i000, i004, i012, i016, i020; bob: i005 (19 of 20 s)
    assert totals["watch_s"] == pytest.approx(20 * 4 + 25 + 0.5 + 19 + 3 + 1)


USERS = ["ann", "bob", "cid"]


def test_restart_keeps_served_sets_counters_and_interests(engines: Engines, clock: Clock) -> None:
    e = engines.open()
    done = _activity(e, clock, checkpoint_midway=True)
    _check_counts(e, done)
    before = snapshot(e, USERS)
    coeng = coengagement(e)
    served_before = {u: set(before[f"excluded:{u}"]) for u in USERS}  # type: ignore[call-overload]
    engines.close(e)
    clock.advance(2)
    e = engines.open()
    after = snapshot(e, USERS)
    assert after == before
    assert coengagement(e) == pytest.approx(coeng)
    assert coeng  # the script does co-engage items
    _check_counts(e, done)
    for u in USERS:
        rest = drain(e, u)
        assert not served_before[u] & set(rest)
        assert len(rest) == len(set(rest))


@pytest.mark.parametrize("checkpoint_midway", [False, True])
def test_crash_without_close_recovers_by_replay(engines: Engines, clock: Clock, checkpoint_midway: bool) -> None:
    e = engines.open()
    done = _activity(e, clock, checkpoint_midway)
    marks = e.store.item_watermarks()
    if checkpoint_midway:  # the scenario is what it says: part is checkpointed, part only logged
        assert marks["us"][0] > 0 and marks["eu"][0] > 0
        assert marks["us"][0] < max(ev.seq for ev in e.store.events_after("us", 0))
    else:
        assert marks == {"us": (0, 0), "eu": (0, 0)}
    before = snapshot(e, USERS)
    coeng = coengagement(e)
    engines.crash(e)
    clock.advance(2)
    e = engines.open()
    after = snapshot(e, USERS)
    for key in before:
        assert after[key] == before[key], key
    assert coengagement(e) == pytest.approx(coeng)
    _check_counts(e, done)
    # and a second restart, this time clean, still agrees
    engines.close(e)
    e = engines.open()
    assert snapshot(e, USERS) == before
    _check_counts(e, done)


def test_stats_names_match_the_public_counters(engines: Engines) -> None:
    e = engines.open()
    e.items.upsert(simple_world(3))
    assert list(e.items.get("i000")["stats"]) == list(STAT_NAMES)  # type: ignore[arg-type]


def test_crash_replay_uses_what_the_item_was_when_the_event_happened(engines: Engines, clock: Clock) -> None:
    """Replay must rebuild the state the engine had, even when an item's metadata changed after an event:
    a completed 10 s view stays a completion after the video is re-upserted as 60 s with other tags."""
    e = engines.open()
    e.items.upsert([item("x", "cx", "cats", duration=10.0), item("y", "cy", "dogs")])
    e.events.ingest([view("u", "x", 10.0)])
    e.items.upsert([item("x", "cx", "cars", duration=60.0)])  # metadata update after the event
    before = snapshot(e, ["u"])
    assert e.items.get("x")["stats"]["completions"] == 1  # type: ignore[index]
    engines.crash(e)
    e = engines.open()
    assert e.items.get("x")["stats"]["completions"] == 1  # type: ignore[index]
    after = snapshot(e, ["u"])
    for key in before:
        assert after[key] == before[key], key
