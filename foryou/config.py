"""Settings: one documented place. Defaults here, overridden by a TOML file (`--config`), then by
`FORYOU_<SECTION>_<KEY>` environment variables, then by command-line flags.

Every field below is listed in docs/configuration.md; a test fails when the two drift.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from foryou.errors import ForYouError


@dataclass(frozen=True)
class ServerSettings:
    data: str = "./foryou-data"  # data directory: one SQLite file per region plus the shared catalogue
    host: str = "127.0.0.1"
    port: int = 8000
    regions: tuple[str, ...] = ("us",)  # regions this server holds; the first is the default
    max_body_mb: float = 64.0  # larger request bodies get 413
    feed_budget_ms: float = 50.0  # a feed past this returns what it has (optional steps skipped); 0: no budget
    max_concurrency: int = 1000  # connections and requests at once; beyond it new ones get 503
    header_timeout_s: float = 10.0  # a connection whose request headers take longer is closed
    body_timeout_s: float = 30.0  # a request whose body takes longer to arrive gets 408
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    trusted_proxies: tuple[str, ...] = ()  # peer addresses whose X-Forwarded-For names the client


@dataclass(frozen=True)
class LimitSettings:
    """Per API key: a token bucket of requests, and how many users its requests may create (docs/api.md)."""

    requests_per_s: float = 1000.0  # sustained requests a second per key (0: no limit)
    burst: int = 2000  # ... and how many may come at once
    new_users_per_min: int = 6000  # users a key's requests may create a minute, feeds included (0: no limit)


@dataclass(frozen=True)
class ValueWeights:
    """Ranking value = sum over actions of P(action) x weight(action)."""

    complete: float = 1.0
    like: float = 2.0
    comment: float = 3.0
    share: float = 4.0
    follow: float = 6.0
    # The learned model's extra heads: the duration-debiased watch quantile, P(skip in the first
    # seconds); and the exponent of its retrieval likelihood: the learned value is
    # log(sum of P x weight) + retrieval x score(u, i), i.e. the sum times likelihood^retrieval.
    watch: float = 1.0
    skip: float = -1.0
    retrieval: float = 2.0


@dataclass(frozen=True)
class SourceBudgets:
    """How many candidates each retrieval source may propose per request."""

    interest: int = 200
    follows: int = 40
    trending: int = 100
    fresh: int = 30
    coengagement: int = 80
    fallback: int = 50
    learned: int = 200  # the learned retrieval model's nearest items (when the model is healthy)


@dataclass(frozen=True)
class SignalSettings:
    interest_half_life_h: float = 72.0  # how fast a user's interest in a tag/creator/sound fades
    trending_half_life_h: float = 24.0  # how fast an item's regional engagement fades
    fresh_window_h: float = 48.0  # an item is "new" for this long after created_at
    fresh_max_views: int = 200  # ... and while it has fewer views than this
    event_id_ttl_days: float = 7.0  # idempotency keys are remembered at least this long


@dataclass(frozen=True)
class StoreSettings:
    checkpoint_interval_s: float = 5.0  # derived state (counters, interests) is persisted this often
    user_cache: int = 30_000  # users whose state is kept in memory (least recently used are evicted)
    user_save_after_s: float = 60.0  # a user's changed interest state is saved once unsaved this long


@dataclass(frozen=True)
class LearningSettings:
    """The learned models (docs/learning.md), trained online from the event log."""

    enabled: bool = True  # off: the hand-set ranking alone
    dim: int = 16  # embedding width
    popularity_weight: float = 0.25  # retrieval score += this x log(1 + the item's positives ever)
    trending_weight: float = 1.5  # ... + this x log(1 + its trending score, all regions)
    memory: int = 512  # positives of earlier steps kept as extra negatives of the retrieval softmax
    lr: float = 0.05  # Adagrad step of the embedding rows
    dense_lr: float = 0.05  # Adagrad step of the ranking heads' weights
    batch_size: int = 2048  # examples per training step
    min_count: int = 1  # occurrences before an id gets an embedding row
    ttl_days: float = 30.0  # rows idle this long are freed (0: never)
    join_window_s: float = 60.0  # wait this long for a served item's view and a view's actions
    min_examples: int = 2000  # the model serves only after learning this many examples
    max_loss: float = 25.0  # a training step above this loss (or 4x the recent one) is dropped
    index: str = "hnsw"  # the ANN index of item vectors: "hnsw" (usearch) or "exact"
    checkpoint_interval_s: float = 30.0  # model rows changed since are saved this often (in-process training)
    trainer: str = "process"  # where `serve` trains: "process" (its child), "inline", "external" (`foryou train`)
    publish_interval_s: float = 0.5  # a trainer process publishes a model version this often
    trainer_nice: int = 0  # a trainer process runs this much below the server's CPU priority (0: level)
    duel: bool = True  # serve only while the learned value ranks live completions better than the fallback's
    duel_window: int = 2000  # ... judged on this many recent sampled views (AUC), scored before learning them


@dataclass(frozen=True)
class PolicySettings:
    """Feed policy (docs/policy.md): new videos' exposure pools, exploration, diversity, user controls."""

    topic_run_cap: int = 4  # at most this many consecutive items of one topic, across responses
    sensitive_topics: tuple[str, ...] = ("dieting", "sadness", "breakup", "self-harm")
    sensitive_run_cap: int = 1  # ... and of items of sensitive topics (any of them) in a row
    mmr_lambda: float = 0.3  # diversity: value minus this x the greatest similarity to items above it
    explore_share: float = 0.07  # share of slots for topics outside the user's known interests
    known_topics: int = 3  # a user's strongest topics count as known (exploration picks others)
    explore_prior: float = 2.0  # pseudo-views of the topic's catalogue-wide completion rate (Thompson prior)
    topic_lift_gain: float = 1.0  # value += this x log(user's posterior completion rate of the topic / its rate)
    first_pool: int = 300  # impressions of a new video's first exposure pool
    pool_growth: float = 10.0  # each further pool is this many times the one before
    pool_count: int = 3  # pools before an item is on its own (graduated)
    pool_share: float = 0.05  # share of slots for items in a pool (doubled while one waits too long)
    pool_within_h: float = 1.0  # a new item should have its first impression within this long
    pool_max_age_h: float = 48.0  # items created longer ago than this at upload join no pool
    promote_quantile: float = 0.5  # promoted when its engagement per impression is at least this quantile
    pool_eval_delay_s: float = 60.0  # wait this long after a pool fills for its views and actions
    pool_expire_days: float = 14.0  # an item whose pool has not filled this long after upload is held
    topic_weight_gain: float = 1.0  # a user's topic weight w moves the value by w x this (log scale)
    not_interested_days: float = 30.0  # after "not interested", that creator and sound are not served
    max_keyword_words: int = 400  # words across all of a user's blocked keywords
    max_phrase_words: int = 8  # words in one blocked keyword


@dataclass(frozen=True)
class PrivacySettings:
    """User-data protection (docs/privacy.md)."""

    retention_days: float = 0.0  # raw events older than this are deleted, hourly (0: kept for ever)
    personalize_minors: bool = True  # false: users under 18 get the feed not based on profiling
    erasure_refuse_days: float = 30.0  # events and requests for an erased user are refused this long
    secret: str = ""  # the key of users' keyed hashes, as a value (64 hex digits, or 32+ characters); wins
    secret_file: str = ""  # ... else read from (or created in) this file; default: DATA/privacy.key
    audit_rotate_mb: float = 64.0  # the audit log moves to a new file past this size (0: never)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    weights: ValueWeights = field(default_factory=ValueWeights)
    budgets: SourceBudgets = field(default_factory=SourceBudgets)
    signals: SignalSettings = field(default_factory=SignalSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    learning: LearningSettings = field(default_factory=LearningSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)


class ConfigError(ForYouError):
    """A setting has an unknown name or a value of the wrong type."""


# FORYOU_* variables that are not settings of this file.
NOT_SETTINGS = frozenset({"FORYOU_ADMIN_KEY"})


def env_name(setting: str) -> str:
    """`server.port` -> `FORYOU_SERVER_PORT`."""
    return "FORYOU_" + setting.replace(".", "_").upper()


def setting_names(settings: Settings | None = None) -> list[str]:
    """Every setting as `section.key` (what the docs must list)."""
    settings = settings or Settings()
    return [f"{s.name}.{f.name}" for s in fields(settings) for f in fields(getattr(settings, s.name))]


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """A typed value from TOML (types must match) or from the environment (a string to parse)."""
    kind = kind if isinstance(kind, type) else type(kind)
    text = isinstance(value, str)
    try:
        if kind is tuple:
            if text:
                return tuple(p.strip() for p in value.split(",") if p.strip())
            if isinstance(value, list) and all(isinstance(p, str) for p in value):
                return tuple(value)
        elif kind is bool:
            if isinstance(value, bool):
                return value
            if text and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if text:
                return float(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if text:
                return int(value)
        elif kind is str and text:
            return value
    except ValueError:
        pass
    raise ConfigError(f"setting {name} must be of type {kind.__name__}, got {value!r}", field=name)


def _apply(settings: Settings, section: str, key: str, value: Any) -> Settings:
    current = getattr(settings, section, None)
    if not is_dataclass(current) or key not in {f.name for f in fields(current)}:
        raise ConfigError(f"unknown setting {section}.{key}", field=f"{section}.{key}")
    new_value = _coerce(f"{section}.{key}", getattr(current, key), value)
    updated: Any = replace(current, **{key: new_value})  # type: ignore[type-var]
    return replace(settings, **{section: updated})


# Settings that only make sense in a range: (section.name, lowest, highest).
_RANGES = (("policy.topic_run_cap", 1, None), ("policy.sensitive_run_cap", 1, None), ("policy.mmr_lambda", 0, None),
           ("policy.explore_share", 0, 1), ("policy.known_topics", 0, None), ("policy.explore_prior", 0.01, None),
           ("policy.topic_lift_gain", 0, None), ("policy.first_pool", 1, None), ("policy.pool_growth", 1, None),
           ("policy.pool_count", 1, None), ("policy.pool_share", 0, 0.5), ("policy.pool_within_h", 0, None),
           ("policy.pool_max_age_h", 0, None), ("policy.promote_quantile", 0, 1),
           ("policy.pool_eval_delay_s", 0, None), ("policy.pool_expire_days", 0, None),
           ("policy.topic_weight_gain", 0, None), ("policy.not_interested_days", 0, None),
           ("policy.max_keyword_words", 1, None), ("policy.max_phrase_words", 1, None),
           ("server.feed_budget_ms", 0, None), ("store.user_save_after_s", 0, None),
           ("learning.publish_interval_s", 0.05, None), ("server.max_concurrency", 1, None),
           ("server.header_timeout_s", 0.1, None), ("server.body_timeout_s", 0.1, None),
           ("server.keep_alive_s", 0.1, None), ("limits.requests_per_s", 0, None), ("limits.burst", 1, None),
           ("limits.new_users_per_min", 0, None), ("privacy.audit_rotate_mb", 0, None))


def _check_ranges(settings: Settings) -> None:
    for name, low, high in _RANGES:
        section, key = name.split(".")
        value = getattr(getattr(settings, section), key)
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"setting {name} must be {bounds}, got {value!r}", field=name)
    policy = settings.policy
    if policy.explore_share + policy.pool_share > 1:
        raise ConfigError("policy.explore_share + policy.pool_share must be at most 1", field="policy.explore_share")


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults <- TOML file <- FORYOU_* environment <- explicit overrides (`section.key`: value)."""
    settings = Settings()
    if config_file is not None:
        try:
            table = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}", field="config") from None
        for section, values in table.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config section [{section}] must be a table", field=section)
            for key, value in values.items():
                settings = _apply(settings, section, key, value)
    env = os.environ if env is None else env
    known = {env_name(name): name for name in setting_names(settings)}
    for var, value in env.items():
        if var in known:
            section, key = known[var].split(".")
            settings = _apply(settings, section, key, value)
        elif var.startswith("FORYOU_") and var not in NOT_SETTINGS:
            raise ConfigError(f"unknown environment variable {var} (settings are listed in docs/configuration.md)",
                              field=var)
    for name, value in (overrides or {}).items():
        if value is not None:
            section, key = name.split(".")
            settings = _apply(settings, section, key, value)
    if not settings.server.regions:
        raise ConfigError("server.regions must name at least one region", field="server.regions")
    _check_ranges(settings)
    if settings.learning.trainer not in ("process", "inline", "external"):
        raise ConfigError(f"learning.trainer must be process, inline or external, got {settings.learning.trainer!r}",
                          field="learning.trainer")
    import re

    for region in settings.server.regions:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", region):
            raise ConfigError(f"region code {region!r} must be lowercase letters/digits", field="server.regions")
    return settings
