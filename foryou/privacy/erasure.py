"""Erasure (the right to be forgotten): `DELETE /v1/users/{id}` removes everything held about the user
from their region's store and from memory, and leaves a tombstone, the user id as a keyed hash, so that
events and requests for the user that arrive afterwards are refused (410) for
`privacy.erasure_refuse_days` and cannot bring the user back. Item counters keep only their anonymous
aggregates; what the shared model weights learned from the user is not unlearned (docs/privacy.md)."""

from __future__ import annotations

from collections.abc import Iterable

from foryou.errors import FieldError, Gone, NotFound
from foryou.learning import Learner
from foryou.privacy.audit import AuditLog, keyed_hash
from foryou.state import Live
from foryou.store import Store
from foryou.types import format_time


class Tombstones:
    """Keyed hashes of erased users, each with the time until which the user is refused."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.until: dict[str, float] = {}

    def load(self, store: Store) -> None:
        self.until = dict(store.iter_tombstones())

    def refuse(self, user_ids: Iterable[str], now: float) -> None:
        """Raise `Gone`, listing each of `user_ids` (by position) erased less than the window ago."""
        if not self.until:
            return
        errors, cache = [], {}
        for k, user_id in enumerate(user_ids):
            if user_id not in cache:
                cache[user_id] = self.until.get(keyed_hash(self.key, user_id), 0.0) > now
            if cache[user_id]:
                errors.append(FieldError("user", f"user {user_id!r} was erased: events and requests about them "
                                                 "are refused for now", k))
        if errors:
            raise Gone(errors[0].message, errors=errors)


class ErasureService:
    def __init__(self, live: Live, learner: Learner, audit: AuditLog, tombstones: Tombstones) -> None:
        self.live = live
        self.learner = learner
        self.audit = audit
        self.tombstones = tombstones

    def erase(self, user_id: str, region: str | None = None) -> dict[str, object]:
        """Erase the user and return a receipt: what was deleted, and until when the id is refused.
        Audited (the audit record carries the keyed hash, not the id)."""
        with self.audit.recording("erase", user_id, self.live.clock()):
            return self._erase(user_id, region)

    def _erase(self, user_id: str, named: str | None) -> dict[str, object]:
        live, store = self.live, self.live.store
        live.place(user_id, named)
        region = live.region_of(user_id)
        if region is None:
            raise NotFound(f"unknown user {user_id!r}", field="id")
        now = live.clock()
        event_ids = [e.id for e in store.user_events(region, user_id) if e.id is not None]
        self.learner.forget_user(region, user_id)  # its row and open joins, before the store forgets
        live.forget_user(user_id, region)
        deleted = store.erase_user(region, user_id, event_ids)
        subject = keyed_hash(self.tombstones.key, user_id)
        until = now + live.settings.privacy.erasure_refuse_days * 86400
        store.save_tombstone(subject, until)
        self.tombstones.until[subject] = until
        return {"erased": True, "region": region, "subject": subject, "deleted": deleted,
                "erased_at": format_time(now), "refused_until": format_time(until)}
