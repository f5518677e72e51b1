"""The users' part of the live state: a cache of recently active users (profile, interest state,
served set, controls), loaded from the store on demand and evicted when idle; where each user's
region is; and the request's part of ingestion, which moves the users' interest state.

A cached user is only as good as the user's version in the store (`Profiles.user_versions`), which
every write about the user raises by one: the profile holds the version its state reflects. After a
write this server finds the version one higher, unless another server wrote too; then the user is
read again from the store (profile, saved state, and the user's events logged after it). A feed is
recorded with a compare-and-set on the version, so one computed from a moved state is never served."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from foryou.errors import Conflict, Gone
from foryou.interest import UserState, learn_many, learn_one, loads, seed_interests
from foryou.policy import Controls
from foryou.state.fields import LiveUser, StateFields
from foryou.types import EventRecord, UserRecord

REGIONS_KEPT = 4  # stored users' regions remembered, per user the cache holds (~20 MB at the default)


class Users(StateFields):
    def region_of(self, user_id: str) -> str | None:
        """The region of a stored user."""
        return self.regions_of([user_id]).get(user_id)

    def regions_of(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The regions of those of `user_ids` that are stored: from memory for active users, one
        look-up per region in the store for the others."""
        out: dict[str, str] = {}
        ask: list[str] = []
        known = self.stored_regions
        for user_id in user_ids:
            live = self.users.get(user_id)
            if live is None:
                region = known.get(user_id)
                if region is None:
                    ask.append(user_id)
                else:
                    out[user_id] = region
            elif live.stored:
                out[user_id] = live.profile.region
        if ask:
            found = self.store.find_user_regions(ask)
            if len(known) + len(found) > REGIONS_KEPT * self.settings.store.user_cache:
                known.clear()
            known.update(found)
            out.update(found)
        return out

    def unknown(self, user_ids: Iterable[str]) -> list[str]:
        """Those of `user_ids` neither stored nor being placed by a batch: a request naming them creates them."""
        ids = [u for u in dict.fromkeys(user_ids) if u not in self.pending]
        stored = self.regions_of(ids)
        return [u for u in ids if u not in stored]

    def place(self, user_id: str, region: str | None = None) -> str:
        """The region a request about this user acts in: the user's own. A region the request names
        (X-Region, or the profile's `region`) must be one this server holds and, for a stored user,
        theirs: a user's data is never copied to another region's store to serve a request."""
        return self.place_many([user_id], region)[user_id]

    def place_many(self, user_ids: Iterable[str], region: str | None = None) -> dict[str, str]:
        """`place` for the users of a batch, with one look-up per region for those not in memory."""
        self.check_held(region)
        ids = list(dict.fromkeys(user_ids))
        stored = self.regions_of(ids)
        placed = {}
        for user_id in ids:
            found = stored.get(user_id) or self.pending.get(user_id)
            if region is not None and found is not None and found != region:
                raise Conflict(f"user {user_id!r} belongs to region {found!r}, not {region!r}; a region is fixed "
                               "once set", field="region")
            placed[user_id] = found or region or self.settings.server.regions[0]
        return placed

    @contextlib.contextmanager
    def placing(self, user_ids: Iterable[str], region: str | None) -> Iterator[None]:
        """While a batch of events is appended in chunks, its users not stored yet count as placed in
        `region` (default: the first held), so that a request about them meanwhile finds them there."""
        fresh = self.unknown(user_ids)
        for user_id in fresh:
            self.pending[user_id] = region or self.settings.server.regions[0]
        try:
            yield
        finally:
            for user_id in fresh:
                del self.pending[user_id]

    def check_held(self, region: str | None) -> None:
        """409 for a region this server does not hold: its users' data is elsewhere."""
        held = self.settings.server.regions
        if region is not None and region not in held:
            raise Conflict(f"region {region!r} is not held by this server (it holds {', '.join(held)}): "
                           f"send requests for its users to the server of region {region!r}", field="region")

    def user(self, user_id: str, region: str | None = None) -> LiveUser:
        """The user's live state, loaded on demand; a user never seen is created in `region`
        (default: the server's first region) but not stored until `persist_user`."""
        live = self.users.get(user_id)
        if live is not None:
            self.users.move_to_end(user_id)
            return live
        self.prefetch([user_id], region)
        return self.users[user_id]

    def prefetch(self, user_ids: Sequence[str], region: str | None = None) -> None:
        """Load the profiles and interest state of the users not in memory, one query per region
        (ingestion calls this once per batch)."""
        missing = [u for u in dict.fromkeys(user_ids) if u not in self.users]
        if not missing:
            return
        self._trim()  # before, not after: the users loaded now are about to be used
        now = self.clock()
        for found in self.catalog.regions:  # one look-up per region: the store knows where each user is
            profiles = self.store.get_users(found, missing)
            if not profiles:
                continue
            blobs = self.store.load_user_states(found, list(profiles))
            for user_id, profile in profiles.items():
                state, behind = self._saved_state(profile, blobs.get(user_id), now)
                live = self.users[user_id] = LiveUser(profile, state)
                if behind:  # saved again at the next checkpoint, else each read would catch up again
                    self.touch(live, behind)
            missing = [u for u in missing if u not in profiles]
            if not missing:
                break
        for user_id in missing:  # new users, created in `region` (stored once something is kept of them)
            profile = UserRecord(user_id, region or self.settings.server.regions[0], created_at=now)
            self.users[user_id] = LiveUser(profile, UserState(served_seq=0), stored=False, serving_loaded=True)

    def _saved_state(self, profile: UserRecord, blob: bytes | None, now: float,
                     through: int | None = None) -> tuple[UserState, int]:
        """The user's state as saved, brought up to the user's newest logged event (or `through`): a
        saved state lacks the events appended while the user was not in this server's memory (by
        this one, another, or a bulk load), and those after its last checkpoint before a crash. With
        the seq of the first event it lacked (0: none)."""
        # Without a saved state the user's whole log is taken in: every view is in it, and only the
        # served rows are left to read (`serving`), not the log's views again.
        state = loads(blob, self.catalog) if blob else UserState(served_seq=0)
        if not blob and profile.interests:
            seed_interests(state, self.catalog, profile.interests, now, self.tau)
        saved = state.seq
        self.catch_up(state, profile, through)
        return state, (saved + 1 if state.seq > saved else 0)

    def catch_up(self, state: UserState, profile: UserRecord, through: int | None = None) -> None:
        """Apply to `state` the user's logged events past it, up to `profile.last_event` (or `through`).
        (Co-engagement is the log follower's, and not counted here.)"""
        last = profile.last_event if through is None else min(through, profile.last_event)
        if last <= state.seq:
            return
        index, mute_s = self.catalog.index, self.settings.policy.not_interested_days * 86400
        found = [(index.get(e.item), e) for e in self.store.user_events(profile.region, profile.id, after=state.seq)]
        applied = [(i, e) for i, e in found if e.seq <= last and i is not None]
        learn_many(state, self.catalog, [(i, e.type, e.watch_s, e.ts) for i, e in applied], self.tau, mute_s)
        if applied:
            state.seq = applied[-1][1].seq

    def state_before(self, user_id: str, region: str, seq: int) -> UserState | None:
        """The user's interest state as of just before their event `seq`, from the store (the duel's
        fallback, for a user who was not in memory when the event came): the saved state brought up to
        `seq - 1`, not kept; None when the saved state already holds the event, or the user is gone."""
        profile = self.store.get_users(region, [user_id]).get(user_id)
        if profile is None:
            return None
        blob = self.store.load_user_states(region, [user_id]).get(user_id)
        state, _ = self._saved_state(profile, blob, self.clock(), through=seq - 1)
        return state if state.seq < seq else None

    def reload(self, live: LiveUser, through: int | None = None) -> None:
        """Read a cached user again from the store (another server wrote about them): the profile with
        its version, the saved state brought up to the log (through `through`), and (at the next
        feed) the served set and controls. A user gone from the store was erased meanwhile: `Gone`."""
        region, user_id = live.profile.region, live.profile.id
        profile = self.store.get_users(region, [user_id]).get(user_id)
        if profile is None:
            self.forget_user(user_id, region)
            raise Gone(f"user {user_id!r} was erased", field="user")
        blob = self.store.load_user_states(region, [user_id]).get(user_id)
        live.profile, (live.state, behind) = profile, self._saved_state(profile, blob, self.clock(), through)
        live.stored, live.serving_loaded, live.keywords = True, False, None
        if behind:
            self.touch(live, behind)

    def wrote(self, region: str, lives: Sequence[LiveUser]) -> list[LiveUser]:
        """After one write about each of `lives` (cached users of `region`): move their cached version
        on by one, or, where another server wrote too, return them (the caller reloads them)."""
        versions = self.store.user_versions(region, [live.profile.id for live in lives])
        moved = []
        for live in lives:
            found = versions.get(live.profile.id, 0)
            if found == live.profile.version + 1:
                live.profile.version = found
            else:
                moved.append(live)
        return moved

    def serving(self, live: LiveUser) -> LiveUser:
        """Make sure the user's served/viewed items and last served item are loaded (feeds need them;
        learning does not, so ingestion never pays for them)."""
        if not live.serving_loaded:
            catalog, state, region, user_id = self.catalog, live.state, live.profile.region, live.profile.id
            index, store = catalog.index, self.store
            # A saved state holds what was served through its `served_seq` and viewed through its `seq`
            # (the catch-up added later views): only later served rows are read. Else the whole log.
            served = store.user_served(region, user_id, after=max(state.served_seq, 0))
            state.excluded.update([index[r.item] for r in served if r.item in index])
            if state.served_seq < 0:
                state.excluded.update([index[i] for i in store.excluded_items(region, user_id) if i in index])
            state.served_seq = max(state.served_seq, served[-1].seq if served else 0)
            # served rows are durable; the checkpointed copy of what came last may be older
            recent = [index[i] for i in store.recent_served(region, user_id, 8) if i in index] if served else []
            if recent:
                last = recent[0]
                state.last_creator, state.last_sound = catalog.creator_l[last], catalog.sound_l[last]
                state.last_topic = catalog.topic_l[last]
                topics = [catalog.topic_l[i] for i in recent]
                state.topic_run = next((k for k, t in enumerate(topics) if t != topics[0]), len(topics))
                sensitive = self.sensitive(np.asarray(recent, np.int64)).tolist()
                state.sensitive_run = next((k for k, s in enumerate(sensitive) if not s), len(sensitive))
            live.controls = Controls.loads(self.store.get_controls(region, user_id))
            live.serving_loaded = True
        return live

    def sensitive(self, idx: np.ndarray) -> np.ndarray:
        """Which of these items have a topic flagged sensitive (`policy.sensitive_topics`)."""
        codes = [c for t in self.settings.policy.sensitive_topics if (c := self.catalog.tags.ids.get(t)) is not None]
        return np.isin(self.catalog.topic[idx], codes) if codes else np.zeros(len(idx), np.bool_)


    def forget_user(self, user_id: str, region: str) -> None:
        """Drop everything held in memory about the user of `region` (erasure): cached state, pending saves."""
        self.users.pop(user_id, None)
        self.stored_regions.pop(user_id, None)
        self.dirty_users[region].pop(user_id, None)
        for held in self.appended.values():  # may hold the user's events, which the log no longer does
            held.clear()
        self.positives.forget(user_id)

    def persist_user(self, live: LiveUser) -> None:
        self.store.put_user(live.profile)
        self.mark_stored(live)
        for moved in self.wrote(live.profile.region, [live]):
            self.reload(moved)

    def mark_stored(self, live: LiveUser) -> None:
        live.stored = True

    def _trim(self) -> None:
        """Evict least recently used users down to `store.user_cache`: nothing of an idle user stays in
        memory (a user never stored has nothing to lose). Users with unsaved state cannot leave yet:
        they are moved to the recent end, so each call looks at a bounded number of users (walking the
        whole cache on every call made loads with many dirty users quadratic)."""
        users = self.users
        dirty = sum(len(d) for d in self.dirty_users.values())
        excess = min(len(users) - self.settings.store.user_cache, len(users) - dirty)  # evictable
        budget = excess + 64  # dirty users met on the way move to the back: amortised O(1)
        while excess > 0 and budget > 0 and users:
            budget -= 1
            user_id, live = next(iter(users.items()))
            if live.dirty_since:
                users.move_to_end(user_id)
            else:
                del users[user_id]
                excess -= 1

    def touch(self, live: LiveUser, seq: int = 0) -> None:
        """Mark a user's state changed by event `seq` (or by something not in the event log)."""
        if not live.dirty_since:
            region = live.profile.region
            live.dirty_since = seq or self.event_mark[region] + 1
            live.dirty_at = self.clock()
            self.dirty_users[region][live.profile.id] = live

    def apply_user_events(self, region: str, events: Sequence[EventRecord], seqs: Sequence[int],
                          through: int = 0) -> None:
        """The request's part of ingestion: each event (its seq in the region's log, ascending) changes
        its user's interest state, if the user is in memory, so that the user's next feed reflects it.
        A user not in memory is not read for it: their saved state catches up with the log when they
        are next read (`catch_up`). The item aggregates and co-engagement follow from the log (the
        log follower's `apply_item_events`)."""
        catalog, users = self.catalog, self.users
        index, tau = catalog.index, self.tau
        mute_s = self.settings.policy.not_interested_days * 86400
        for event, seq in zip(events, seqs, strict=True):
            live, i = users.get(event.user), index.get(event.item)
            if live is None or i is None or seq <= live.state.seq:
                continue
            live.state.seq = seq
            learn_one(live.state, catalog, i, event.type, event.watch_s, event.ts, tau, mute_s)
            self.touch(live, seq)
        last = max(seqs[-1] if seqs else 0, through)  # `through`: the append's last seq, when `events` are part of it
        if last > self.event_mark[region]:
            self.event_mark[region] = last
