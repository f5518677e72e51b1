"""The public data contract: what clients send (validated models) and the records the engine keeps.

Timestamps are RFC 3339 strings with an offset on the wire and float epoch seconds inside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

# 1-128 of [A-Za-z0-9._:-], but not "." or "..", which a client normalising paths would turn into
# another route (a user ".." could be created but never read or erased). No look-ahead: pydantic's
# regex engine has none, so the three ways to start are spelled out.
ID_PATTERN = (r"^([A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}|\.[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,126}"
              r"|\.\.[A-Za-z0-9._:-]{1,126})$")
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,15}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]

EVENT_TYPES = ("view", "like", "comment", "share", "follow", "not_interested", "report")
EventType = Literal["view", "like", "comment", "share", "follow", "not_interested", "report"]
AgeBand = Literal["under13", "13-17", "18+"]

# The public item counters, in the order the engine stores them.
STAT_NAMES = (
    "served", "views", "watch_s", "completions", "likes", "comments",
    "shares", "follows", "not_interested", "reports",
)


RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,32})?([Zz]|[+-]\d{2}:\d{2})$"
_FRACTION = re.compile(r"(\.\d{6})\d+")
_RFC3339 = re.compile(RFC3339_PATTERN)


_FIRST = datetime(1, 1, 2, tzinfo=UTC)
_LAST = datetime(9999, 12, 30, tzinfo=UTC)


def parse_time(value: str, checked: bool = False) -> float:
    """RFC 3339 with an explicit offset -> epoch seconds (`checked`: the shape was already matched)."""
    if not checked and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2024-05-01T12:00:00Z")
    # datetime wants an upper-case T and Z and at most microseconds; RFC 3339 allows more
    value = _FRACTION.sub(r"\1", value.upper().replace(" ", "T"))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError("must carry a UTC offset (e.g. Z or +02:00)")
    if not _FIRST <= moment <= _LAST:  # so that it can be written back in UTC
        raise ValueError("must lie between years 0001 and 9999 in UTC")
    return moment.timestamp()


def format_time(ts: float) -> str:
    """Epoch seconds -> RFC 3339 in UTC."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


# The shape is checked while validating (fast, in pydantic's core); services turn it into epoch seconds
# with `parse_time`, which also rejects impossible dates.
Timestamp = Annotated[str, StringConstraints(pattern=RFC3339_PATTERN), WithJsonSchema(
    {"type": "string", "format": "date-time", "example": "2024-05-01T12:00:00Z"})]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ItemIn(_Strict):
    """A video, as a platform sends it."""

    id: Id
    creator: Id
    duration_s: float = Field(gt=0, le=3600)
    caption: str | None = Field(default=None, max_length=4000)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    topic: Tag | None = None
    sound: Id | None = None
    lang: str | None = Field(default=None, min_length=1, max_length=35)
    regions: list[Region] | None = Field(default=None, max_length=256)
    created_at: Timestamp | None = None
    mature: bool = False


class UserIn(_Strict):
    """`PUT /v1/users/{id}`: only the fields given are changed."""

    region: Region | None = None
    interests: list[Tag] | None = Field(default=None, max_length=64)
    lang: str | None = Field(default=None, min_length=1, max_length=35)
    age_band: AgeBand | None = None
    personalized: bool | None = None


Keyword = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"[^\W_]")]
TopicWeight = Annotated[float, Field(ge=-1.0, le=1.0)]


class ControlsIn(_Strict):
    """`PUT /v1/users/{id}/controls`: only the fields given are replaced."""

    blocked_keywords: list[Keyword] | None = Field(default=None, max_length=200)
    topic_weights: dict[Tag, TopicWeight] | None = Field(default=None, max_length=256)


class EventIn(_Strict):
    """One thing a user did."""

    user: Id
    item: Id
    type: EventType
    watch_s: float | None = Field(default=None, ge=0, le=86400)
    ts: Timestamp | None = None
    id: str | None = Field(default=None, min_length=1, max_length=256)
    request_id: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _watch_for_views(self) -> EventIn:
        if self.type == "view" and self.watch_s is None:
            raise ValueError("watch_s is required for a view")
        return self


class ItemBatch(_Strict):
    items: list[ItemIn] = Field(max_length=10_000)


class EventBatch(_Strict):
    events: list[EventIn] = Field(max_length=10_000)


@dataclass(slots=True)
class ItemRecord:
    """An item as stored: the client's fields plus takedown state."""

    id: str
    creator: str
    duration_s: float
    created_at: float
    caption: str | None = None
    tags: tuple[str, ...] = ()
    topic: str | None = None
    sound: str | None = None
    lang: str | None = None
    regions: tuple[str, ...] | None = None
    mature: bool = False
    down: bool = False

    def public(self) -> dict[str, object]:
        return {
            "id": self.id, "creator": self.creator, "duration_s": self.duration_s,
            "caption": self.caption, "tags": list(self.tags), "topic": self.topic,
            "sound": self.sound, "lang": self.lang,
            "regions": list(self.regions) if self.regions is not None else None,
            "created_at": format_time(self.created_at), "mature": self.mature, "taken_down": self.down,
        }


@dataclass(slots=True)
class UserRecord:
    id: str
    region: str
    interests: tuple[str, ...] = ()
    lang: str | None = None
    age_band: str | None = None
    created_at: float = 0.0
    personalized: bool = True  # False: a feed not based on profiling (DSA Article 38)
    # As the store last had them (not part of the profile): the user's version, which every write
    # about the user raises by one (`Profiles.user_versions`), and the seq of the user's newest event.
    version: int = field(default=0, compare=False)
    last_event: int = field(default=0, compare=False)

    def public(self) -> dict[str, object]:
        return {
            "id": self.id, "region": self.region, "interests": list(self.interests),
            "lang": self.lang, "age_band": self.age_band, "created_at": format_time(self.created_at),
            "personalized": self.personalized,
        }


@dataclass(slots=True)
class EventRecord:
    """An accepted event, as appended to the user's region log."""

    user: str
    item: str
    type: str
    watch_s: float
    ts: float
    id: str | None = None
    request_id: str | None = None
    seq: int = 0


@dataclass(slots=True)
class ServedRecord:
    user: str
    item: str
    request_id: str
    ts: float
    seq: int = 0
    variant: str = ""  # the feed settings' variant that served it ("": the deployment's own)


@dataclass
class FeedItem:
    id: str
    score: float
    reasons: list[str] = field(default_factory=list)
    explain: dict[str, object] | None = None  # with `explain=true`: sources, heads, weights, policy steps
