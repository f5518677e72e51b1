"""The right of access and portability: everything held about one user, as JSON. It reads only the
store of the user's region and the in-memory state of that user."""

from __future__ import annotations

from foryou.catalog import Catalog
from foryou.errors import NotFound
from foryou.interest import CREATOR, SOUND, TAG, TOPIC, UserState, code_of, decay, kind_of
from foryou.learning import Learner
from foryou.privacy.audit import AuditLog, audited
from foryou.state import Live
from foryou.types import format_time

_KINDS = {TAG: "tag", TOPIC: "topic", CREATOR: "creator", SOUND: "sound"}


def _name(catalog: Catalog, feature: int) -> str:
    kind, code = kind_of(feature), code_of(feature)
    vocab = catalog.creators if kind == CREATOR else catalog.sounds if kind == SOUND else catalog.tags
    return vocab.names[code]


def interests(catalog: Catalog, state: UserState, now: float, tau: float) -> list[dict[str, object]]:
    """The interests inferred from the user's events, strongest first, with their weights at `now`."""
    scale = decay(state, now, tau)
    rows = [{"kind": _KINDS[kind_of(f)], "name": _name(catalog, f), "weight": round(w * scale, 6)}
            for f, w in state.weights.items()]
    rows.sort(key=lambda r: -abs(float(r["weight"])))  # type: ignore[arg-type]
    return rows


class ExportService:
    def __init__(self, live: Live, learner: Learner | None = None, audit: AuditLog | None = None) -> None:
        self.live = live
        self.learner = learner
        self.audit = audit

    def export(self, user_id: str, region: str | None = None) -> dict[str, object]:
        """Profile, controls, events, served history, inferred interests with weights, and the learned
        user vector: everything the engine holds about the user. Audited."""
        with audited(self.audit, "export", user_id, self.live.clock()):
            return self._export(user_id, region)

    def _export(self, user_id: str, named: str | None) -> dict[str, object]:
        live = self.live
        live.place(user_id, named)
        region = live.region_of(user_id)
        if region is None:
            raise NotFound(f"unknown user {user_id!r}", field="id")
        user = live.serving(live.user(user_id))
        state, catalog, store, now = user.state, live.catalog, live.store, live.clock()
        learned: list[float] | None = None
        vector = self.learner.user_vector(region, user_id) if self.learner is not None else None
        if vector is not None:
            learned = [round(float(x), 6) for x in vector]
        return {
            "exported_at": format_time(now),
            "profile": user.profile.public(),
            "controls": user.controls.public(),
            "events": [{"seq": e.seq, "item": e.item, "type": e.type, "watch_s": e.watch_s, "ts": format_time(e.ts),
                        "id": e.id, "request_id": e.request_id} for e in store.user_events(region, user_id)],
            "served": [{"item": s.item, "request_id": s.request_id, "ts": format_time(s.ts),
                        **({"variant": s.variant} if s.variant else {})}
                       for s in store.user_served(region, user_id)],
            "inferred": {
                "interests": interests(catalog, state, now, live.tau),
                "follows": sorted(catalog.creators.names[c] for c in state.follows),
                "not_interested": [{"kind": _KINDS[kind_of(f)], "name": _name(catalog, f), "until": format_time(t)}
                                   for f, t in state.muted.items() if t > now],
                "topic_views": {catalog.tags.names[t]: {"views": v, "completions": c}
                                for t, (v, c) in state.topic_views.items()},
                "learned_vector": learned,
            },
        }
