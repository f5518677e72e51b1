"""Refused calls in the audit log, as `refused` (the route as `target`), without letting a flood of
refusals become a flood of fsyncs: at most REFUSALS_PER_MINUTE a minute per caller, a caller being
an API key, or for calls without a valid key the peer's address (one noisy client does not use up
everyone's budget), and at most KEYLESS_PER_MINUTE for all callers without a key together (many
addresses must not add up to a flood either). What a minute dropped is recorded as `refused_dropped`
(the count as `target`) when the next minute's first refusal comes. `X-Forwarded-For` names the peer
only when the request comes from a proxy listed in `server.trusted_proxies`: anyone else could write
anything there."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

from starlette.types import Scope

from foryou.errors import Forbidden, ForYouError
from foryou.privacy.audit import CALLER, AuditLog
from foryou.privacy.keys import ApiKey

REFUSALS_PER_MINUTE = 60  # per caller
KEYLESS_PER_MINUTE = 600  # for all callers without a valid key together: addresses are cheap to come by


def client_address(scope: Scope, trusted: Iterable[str]) -> str:
    """The caller's address: the TCP peer, or, when the peer is a trusted proxy, the last address in
    `X-Forwarded-For` that is not one of the trusted proxies."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    trusted = set(trusted)
    if peer not in trusted:
        return str(peer)
    hops = [h.strip() for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"
            for h in v.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return str(peer)


class Refusals:
    def __init__(self, audit: AuditLog, clock: Callable[[], float], trusted_proxies: Iterable[str] = ()) -> None:
        self.audit = audit
        self.clock = clock
        self.trusted = tuple(trusted_proxies)
        self.minute = 0
        self.counts: dict[str, int] = {}  # caller -> refusals this minute (at most the callers recorded)
        self.keyless = 0  # refusals of callers without a key recorded this minute
        self.keyless_dropped = 0  # ... and dropped past KEYLESS_PER_MINUTE

    def peer(self, scope: Scope) -> str:
        return client_address(scope, self.trusted)

    def record(self, key: ApiKey | None, outcome: str, route: str, user_id: str | None, peer: str = "") -> None:
        """Audit one refusal of `key`'s call (None: no valid key; then `peer` is the caller)."""
        minute = int(time.time() // 60)
        if minute != self.minute:
            self._settle()
            self.minute = minute
        if key is None and self.keyless >= KEYLESS_PER_MINUTE:
            self.keyless_dropped += 1  # not even counted per address: the table stays small
            return
        caller = f"key:{key.id}" if key is not None else f"peer:{peer}"
        count = self.counts[caller] = self.counts.get(caller, 0) + 1
        if count > REFUSALS_PER_MINUTE:
            return
        if key is None:
            self.keyless += 1
        self._append(key.id if key is not None else None, "refused", user_id, outcome, route)

    def _settle(self) -> None:
        """At a new minute: record what each caller of the last one had dropped, and start afresh."""
        for caller, count in self.counts.items():
            if count > REFUSALS_PER_MINUTE:
                key_id = caller[4:] if caller.startswith("key:") else None
                self._append(key_id, "refused_dropped", None, "refused", str(count - REFUSALS_PER_MINUTE))
        if self.keyless_dropped:
            self._append(None, "refused_dropped", None, "refused", str(self.keyless_dropped))
        self.counts, self.keyless, self.keyless_dropped = {}, 0, 0

    def _append(self, key_id: str | None, action: str, user_id: str | None, outcome: str, target: str) -> None:
        token = CALLER.set(key_id)
        try:
            self.audit.append(action, user_id, outcome, self.clock(), target=target)
        except (ForYouError, OSError):  # a damaged log: the request is refused all the same
            pass
        finally:
            CALLER.reset(token)

    @contextlib.contextmanager
    def watching(self, key: ApiKey, route: str, user_id: str | None = None) -> Iterator[None]:
        """Record a 403 raised inside (a check a handler makes once it has read the body)."""
        try:
            yield
        except Forbidden:
            self.record(key, "Forbidden", route, user_id)
            raise
