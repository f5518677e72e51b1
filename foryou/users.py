"""User profiles: set the fields given, read back. A user's region is fixed once set."""

from __future__ import annotations

from foryou.errors import Conflict, NotFound
from foryou.interest import seed_interests
from foryou.live import Live
from foryou.types import UserIn


class UserService:
    def __init__(self, live: Live) -> None:
        self.live = live

    def put(self, user_id: str, body: UserIn) -> dict[str, object]:
        live = self.live
        held = live.settings.server.regions
        if body.region is not None and body.region not in held:
            raise Conflict(f"region {body.region!r} is not held by this server (it holds {', '.join(held)})",
                           field="region")
        existing_region = live.region_of(user_id)
        if body.region is not None and existing_region is not None and body.region != existing_region:
            raise Conflict(f"user {user_id!r} belongs to region {existing_region!r}; a region is fixed once set",
                           field="region")
        user = live.user(user_id, body.region)
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
        live.persist_user(user)
        return profile.public()

    def get(self, user_id: str) -> dict[str, object]:
        if self.live.region_of(user_id) is None:
            raise NotFound(f"unknown user {user_id!r}", field="id")
        return self.live.user(user_id).profile.public()
