"""Retention: raw events older than `privacy.retention_days` (against the server's clock) are deleted,
every hour and on `foryou retention run`. Derived state (item counters, interest state, model rows)
is kept: each deletion first checkpoints it, and deletes only events every saved state already
includes, so that no start-up ever needs a purged event. Served rows are kept (they are what never
serving an item twice rests on)."""

from __future__ import annotations

from foryou.learning import Learner
from foryou.privacy.audit import AuditLog
from foryou.state import Live

_EVERY_S = 3600.0


class RetentionService:
    def __init__(self, live: Live, learner: Learner, audit: AuditLog | None = None) -> None:
        self.live = live
        self.learner = learner
        self.audit = audit
        self._last = 0.0

    def due(self, now: float) -> bool:
        return self.live.settings.privacy.retention_days > 0 and now - self._last >= _EVERY_S

    def run(self, now: float | None = None) -> dict[str, int]:
        """Delete what is past retention now; returns the events deleted per region (none when off)."""
        live = self.live
        now = live.clock() if now is None else now
        self._last = now
        days = live.settings.privacy.retention_days
        if days <= 0:
            return {}
        live.checkpoint()  # what the purged events taught is saved before they go
        self.learner.checkpoint()
        store, cutoff = live.store, now - days * 86400
        deleted = {}
        for region in live.catalog.regions:
            saved = [store.item_watermarks()[region][0], store.user_state_watermark(region)]
            if self.learner.settings.enabled:
                saved.append(self.learner.marks[region])
            deleted[region] = store.delete_events(region, cutoff, min(saved))
        if self.audit is not None:
            self.audit.append("retention", None, f"ok: {sum(deleted.values())} events deleted", now)
        return deleted
