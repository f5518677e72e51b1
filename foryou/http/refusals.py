"""Refused calls in the audit log, as `refused` (the route as `target`), without letting a flood of
refusals become a flood of fsyncs: at most REFUSALS_PER_MINUTE a minute per caller, a caller being
an API key, or for calls without a valid key the peer's address (one noisy client does not use up
everyone's budget). What a minute dropped is recorded as `refused_dropped` (the count as `target`)
at that caller's next refusal. `X-Forwarded-For` names the peer only when the request comes from a
proxy listed in `server.trusted_proxies`: anyone else could write anything there."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

from starlette.types import Scope

from foryou.errors import Forbidden, ForYouError
from foryou.privacy.audit import CALLER, AuditLog
from foryou.privacy.keys import ApiKey

REFUSALS_PER_MINUTE = 60
MAX_CALLERS = 10_000  # callers counted at once; past it, the counts of earlier minutes are settled and dropped


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
        self.counts: dict[str, tuple[int, int]] = {}  # caller -> (minute, refusals in it)

    def peer(self, scope: Scope) -> str:
        return client_address(scope, self.trusted)

    def record(self, key: ApiKey | None, outcome: str, route: str, user_id: str | None, peer: str = "") -> None:
        """Audit one refusal of `key`'s call (None: no valid key; then `peer` is the caller)."""
        caller, minute = (f"key:{key.id}" if key is not None else f"peer:{peer}"), int(time.time() // 60)
        last, count = self.counts.get(caller, (minute, 0))
        dropped = count - REFUSALS_PER_MINUTE if last != minute and count > REFUSALS_PER_MINUTE else 0
        count = count + 1 if last == minute else 1
        if caller not in self.counts and len(self.counts) >= MAX_CALLERS:
            self._settle(minute)
        self.counts[caller] = (minute, count)
        if count > REFUSALS_PER_MINUTE:
            return
        key_id = key.id if key is not None else None
        if dropped:
            self._append(key_id, "refused_dropped", None, outcome, str(dropped))
        self._append(key_id, "refused", user_id, outcome, route)

    def _settle(self, minute: int) -> None:
        """Forget the callers of earlier minutes, recording what each of them dropped."""
        for caller, (last, count) in list(self.counts.items()):
            if last != minute:
                del self.counts[caller]
                if count > REFUSALS_PER_MINUTE:
                    key_id = caller[4:] if caller.startswith("key:") else None
                    self._append(key_id, "refused_dropped", None, "refused", str(count - REFUSALS_PER_MINUTE))

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
