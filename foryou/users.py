"""Users: profiles (set the fields given, read back; a region is fixed once set), the user's controls
(keyword filters, topic weights) and "refresh" (personalisation started afresh)."""

from __future__ import annotations

from foryou.errors import Conflict, InvalidInput, NotFound
from foryou.interest import seed_interests
from foryou.learning import Learner
from foryou.policy.controls import keyword_limits
from foryou.privacy.audit import AuditLog, audited
from foryou.privacy.erasure import Tombstones
from foryou.state import Live, LiveUser
from foryou.types import ControlsIn, UserIn


class UserService:
    def __init__(self, live: Live, learner: Learner | None = None, audit: AuditLog | None = None,
                 tombstones: Tombstones | None = None) -> None:
        self.live = live
        self.learner = learner
        self.audit = audit
        self.tombstones = tombstones

    def put(self, user_id: str, body: UserIn, region: str | None = None) -> dict[str, object]:
        """`region` is the one the request names (X-Region); the body's `region` must agree with it."""
        live = self.live
        if body.region is not None and region is not None and body.region != region:
            raise Conflict(f"the body names region {body.region!r} but the request {region!r}", field="region")
        placed = live.place(user_id, body.region or region)
        if self.tombstones is not None:
            self.tombstones.refuse([user_id], live.clock())
        user = live.user(user_id, placed)
        profile = user.profile
        if "interests" in body.model_fields_set:
            profile.interests = tuple(dict.fromkeys(body.interests or ()))
        if body.interests:
            seed_interests(user.state, live.catalog, profile.interests, live.clock(), live.tau)
            live.touch(user)
        if "lang" in body.model_fields_set:
            profile.lang = body.lang
        if "age_band" in body.model_fields_set:
            profile.age_band = body.age_band
        if body.personalized is not None:
            profile.personalized = body.personalized
        live.persist_user(user)
        return profile.public()

    def get(self, user_id: str, region: str | None = None) -> dict[str, object]:
        """The profile; a read of the user's data, so audited."""
        with audited(self.audit, "profile_read", user_id, self.live.clock()):
            return self._known(user_id, region).profile.public()

    def _known(self, user_id: str, region: str | None) -> LiveUser:
        self.live.place(user_id, region)
        if self.live.region_of(user_id) is None:
            raise NotFound(f"unknown user {user_id!r}", field="id")
        return self.live.serving(self.live.user(user_id))

    def controls(self, user_id: str, region: str | None = None) -> dict[str, object]:
        """The controls; a read of the user's data, so audited."""
        with audited(self.audit, "controls_read", user_id, self.live.clock()):
            return self._known(user_id, region).controls.public()

    def set_controls(self, user_id: str, body: ControlsIn, region: str | None = None) -> dict[str, object]:
        """Replace the fields given; they apply from the next request."""
        policy = self.live.settings.policy
        if body.blocked_keywords is not None:  # the caps bound the filter's work per feed: checked first
            problems = keyword_limits(body.blocked_keywords, policy.max_keyword_words, policy.max_phrase_words)
            if problems:
                raise InvalidInput(problems)
        user = self._known(user_id, region)
        controls = user.controls
        if body.blocked_keywords is not None:
            controls.blocked_keywords = tuple(dict.fromkeys(k.strip() for k in body.blocked_keywords))
        if body.topic_weights is not None:
            controls.topic_weights = {t: w for t, w in body.topic_weights.items() if w}
        self.live.store.put_controls(user.profile.region, user_id, controls.dumps())
        self._wrote(user)
        return controls.public()

    def _wrote(self, user: LiveUser) -> None:
        """After one write about the user: read them again if another server wrote about them too."""
        for moved in self.live.wrote(user.profile.region, [user]):
            self.live.reload(moved)

    def refresh(self, user_id: str, region: str | None = None) -> dict[str, object]:
        """Start personalisation afresh, as for a new user: interests learned from events (the declared
        ones are seeded again), recent favourites, "not interested" mutes and the learned user vector
        go; history stays in the store (for the user's own export), what was served is still never
        served again, follows and controls stay. Saved at once, so that no restart brings the old state
        back. Audited."""
        with audited(self.audit, "refresh", user_id, self.live.clock()):
            return self._refresh(user_id, region)

    def _refresh(self, user_id: str, region: str | None) -> dict[str, object]:
        live = self.live
        user = self._known(user_id, region)
        region = user.profile.region  # the request's was checked against it
        user.state = user.state.reset()
        user.state.seq = live.event_mark[region]  # replay after a crash skips what came before
        if user.profile.interests:  # as for a new user: the declared interests lead again
            seed_interests(user.state, live.catalog, user.profile.interests, live.clock(), live.tau)
        live.store.save_user_states(region, live.state_blobs({user_id: user.state}),
                                    live.store.user_state_watermark(region))
        if self.learner is not None:
            self.learner.forget_user(region, user_id)
            self.learner.checkpoint()
        user.controls.refreshed_at = live.clock()
        live.store.put_controls(region, user_id, user.controls.dumps())
        self._wrote(user)
        return {"id": user_id, "refreshed_at": user.controls.public()["refreshed_at"]}
