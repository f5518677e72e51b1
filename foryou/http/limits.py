"""Per-key limits, so that one client (or one leaked key) cannot take the server from the others:
a token bucket of requests, and one of users its requests may create (a feed for an unknown id
creates one too). Past either, 429 with `Retry-After`. State is per process and per key id, so it
stays as small as the key table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from foryou.config import LimitSettings
from foryou.errors import FieldError, InvalidInput, TooManyRequests


@dataclass
class TokenBucket:
    rate: float  # tokens a second
    size: float
    tokens: float
    at: float  # when `tokens` was last brought up to date

    def take(self, now: float, n: float = 1.0) -> float:
        """Take `n` tokens if there are; else take none and return the seconds until there would be."""
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class Limits:
    def __init__(self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.requests: dict[str, TokenBucket] = {}
        self.creations: dict[str, TokenBucket] = {}

    def request(self, key_id: str) -> None:
        """Count one request of the key; 429 when its bucket is empty."""
        rate = self.settings.requests_per_s
        if rate <= 0:
            return
        bucket = self._bucket(self.requests, key_id, rate, self.settings.burst)
        wait = bucket.take(self.clock())
        if wait:
            raise TooManyRequests(f"this key's rate limit ({rate:g} requests a second, limits.requests_per_s) "
                                  "is used up: slow down", retry_after=wait)

    def new_users(self, key_id: str, count: int) -> None:
        """Count `count` users about to be created by the key's request; 429 past the minute's quota
        (422 for a request that could never fit it)."""
        per_min = self.settings.new_users_per_min
        if per_min <= 0 or count <= 0:
            return
        if count > per_min:
            raise InvalidInput([FieldError("user", f"this request would create {count} users; a key may create at "
                                                   f"most {per_min} a minute (limits.new_users_per_min): send "
                                                   "them in smaller batches")])
        bucket = self._bucket(self.creations, key_id, per_min / 60.0, per_min)
        wait = bucket.take(self.clock(), count)
        if wait:
            raise TooManyRequests(f"this key may create at most {per_min} users a minute (limits.new_users_per_min), "
                                  "feeds for unknown users included", retry_after=wait, field="user")

    def _bucket(self, buckets: dict[str, TokenBucket], key_id: str, rate: float, size: float) -> TokenBucket:
        bucket = buckets.get(key_id)
        if bucket is None:
            bucket = buckets[key_id] = TokenBucket(rate, size, size, self.clock())
        return bucket
