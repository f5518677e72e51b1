"""The one small tree of errors the engine raises; the HTTP edge maps each to a status code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with one field; `index` is the entry's position in a batch."""

    field: str
    message: str
    index: int | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"field": self.field, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        return out


class ForYouError(Exception):
    """Base of every error the engine raises on purpose."""

    status = 400

    def __init__(self, message: str, field: str = "", errors: list[FieldError] | None = None):
        super().__init__(message)
        self.errors = errors if errors is not None else [FieldError(field, message)]


class MalformedRequest(ForYouError):
    """The request could not be parsed at all (bad JSON, wrong content)."""

    status = 400


class InvalidInput(ForYouError):
    """Parsed, but some field breaks the contract; nothing was applied."""

    status = 422

    def __init__(self, errors: list[FieldError]):
        super().__init__(errors[0].message if errors else "invalid input", errors=errors)


class Unauthorized(ForYouError):
    """No valid API key: missing, unknown, revoked or expired."""

    status = 401


class Forbidden(ForYouError):
    """A valid key, but outside its scopes or its region."""

    status = 403


class NotFound(ForYouError):
    status = 404


class Conflict(ForYouError):
    """The request contradicts stored state (e.g. changing a user's fixed region)."""

    status = 409


class Stale(Conflict):
    """A compare-and-set found the user's version moved: another server wrote about the user since
    this one read them. Nothing was written; read the user again and retry."""


class Gone(ForYouError):
    """The user was erased: their events and requests are refused for a while."""

    status = 410


class PayloadTooLarge(ForYouError):
    status = 413


class TooManyRequests(ForYouError):
    """A key's rate limit: try again after `retry_after` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: float, field: str = "authorization"):
        super().__init__(message, field=field)
        self.retry_after = retry_after


class Unavailable(ForYouError):
    """The engine cannot do this safely now (e.g. the audit log is damaged, so audited calls stop)."""

    status = 503
