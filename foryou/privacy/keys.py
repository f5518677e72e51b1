"""API keys: who may call what. A key has scopes and, optionally, a region; it is shown once when
created and stored only as a salted hash (SHA-256 of a per-key salt and the secret: the secret is
192 random bits, so a slow hash would add nothing), in `keys.db` in the data directory, and compared
in constant time. The running server reads the table on every request, so `foryou keys revoke` takes
effect at once. `FORYOU_ADMIN_KEY` in the server's environment is one more admin key (id `env`),
for scripts and tests that start a server with a key they know."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from foryou.datadir import private_dir, private_file
from foryou.errors import FieldError, InvalidInput, NotFound

SCOPES = ("catalog", "events", "feed", "privacy", "admin")
# Scopes that act on what every region shares (the catalogue, the audit log, metrics, the algorithm):
# a key bound to one region cannot hold them, since no region of its own would limit what it did.
SHARED_SCOPES = ("catalog", "admin")
FILE = "keys.db"
PREFIX = "fy"
ENV_ID = "env"
MIN_ENV_KEY = 16  # characters: FORYOU_ADMIN_KEY must be at least this long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, region TEXT,
    salt BLOB NOT NULL, hash BLOB NOT NULL, created_at REAL NOT NULL, expires_at REAL
)"""
_COLS = "id, name, scopes, region, created_at, expires_at"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    region: str | None = None  # None: every region this server holds
    created_at: float = 0.0
    expires_at: float | None = None  # revoked (or rotated out) from then on

    def allows(self, scope: str) -> bool:
        if self.region is not None and scope in SHARED_SCOPES:  # keys bound before that was refused
            return False
        return "admin" in self.scopes or scope in self.scopes

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "region": self.region,
                "created_at": self.created_at, "expires_at": self.expires_at}


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


_DUMMY_SALT = secrets.token_bytes(16)
_DUMMY_HASH = _hash(_DUMMY_SALT, "")


class KeyRing:
    """The keys of one data directory. `admin_key` (from FORYOU_ADMIN_KEY) is held only as a hash."""

    def __init__(self, directory: Path, admin_key: str | None = None) -> None:
        self.directory = directory
        self.env: tuple[bytes, bytes] | None = None
        if admin_key is not None:
            if len(admin_key) < MIN_ENV_KEY:
                raise InvalidInput([FieldError("FORYOU_ADMIN_KEY", f"must be at least {MIN_ENV_KEY} characters")])
            salt = secrets.token_bytes(16)
            self.env = (salt, _hash(salt, admin_key))
        # only hashes, but nobody else's business (SQLite gives its -wal the same mode)
        path = private_file(private_dir(directory) / FILE)
        # autocommit; the CLI writes while a server reads, which WAL allows
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def create(self, name: str, scopes: list[str] | tuple[str, ...], now: float,
               region: str | None = None) -> tuple[ApiKey, str]:
        """A new key and its token (`fy_<id>_<secret>`), which is never shown again."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise InvalidInput([FieldError("scopes", f"choose one or more of {', '.join(SCOPES)}"
                                           + (f" (not {', '.join(bad)})" if bad else ""))])
        if not name.strip():
            raise InvalidInput([FieldError("name", "a key needs a name")])
        shared = [s for s in scopes if s in SHARED_SCOPES]
        if region is not None and shared:
            raise InvalidInput([FieldError("region", f"a key with the {', '.join(shared)} scope acts on what every "
                                                     "region shares, so it cannot be bound to one region")])
        key = ApiKey(secrets.token_hex(6), name.strip(), tuple(dict.fromkeys(scopes)), region, now)
        secret, salt = secrets.token_hex(24), secrets.token_bytes(16)
        self.db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                        (key.id, key.name, ",".join(key.scopes), region, salt, _hash(salt, secret), now))
        return key, f"{PREFIX}_{key.id}_{secret}"

    def get(self, key_id: str) -> ApiKey:
        row = self.db.execute(f"SELECT {_COLS} FROM api_keys WHERE id=?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"no key {key_id!r}", field="id")
        return _key(row)

    def list(self) -> list[ApiKey]:
        return [_key(r) for r in self.db.execute(f"SELECT {_COLS} FROM api_keys ORDER BY created_at, id")]

    def revoke(self, key_id: str, now: float) -> ApiKey:
        """Stop the key working from `now` (a revoked key stays listed, so the audit log's ids resolve)."""
        key = self.get(key_id)
        if key.active(now):
            self.db.execute("UPDATE api_keys SET expires_at=? WHERE id=?", (now, key_id))
        return self.get(key_id)

    def rotate(self, key_id: str, now: float, grace_s: float = 0.0) -> tuple[ApiKey, str]:
        """A new key with the same name, scopes and region; the old one keeps working `grace_s` more
        seconds, so that clients can move over without an outage."""
        old = self.get(key_id)
        if old.expires_at is not None:  # revoked, or rotated already (a second rotation would extend it)
            raise InvalidInput([FieldError("id", f"key {key_id!r} is revoked or already rotated; rotate its "
                                                 "successor, or create a new key")])
        new = self.create(old.name, old.scopes, now, old.region)
        self.db.execute("UPDATE api_keys SET expires_at=? WHERE id=?", (now + max(0.0, grace_s), key_id))
        return new

    def any_active(self, now: float) -> bool:
        return self.env is not None or any(k.active(now) for k in self.list())

    def authenticate(self, token: str, now: float) -> ApiKey | None:
        """The active key this token is, or None; the time taken does not depend on how close a guess is."""
        if self.env is not None and hmac.compare_digest(_hash(self.env[0], token), self.env[1]):
            return ApiKey(ENV_ID, "FORYOU_ADMIN_KEY", ("admin",))
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition("_")
        row = None
        if prefix == PREFIX and len(key_id) == 12:
            row = self.db.execute(f"SELECT {_COLS}, salt, hash FROM api_keys WHERE id=?", (key_id,)).fetchone()
        salt, stored = (row[-2], row[-1]) if row is not None else (_DUMMY_SALT, _DUMMY_HASH)
        matches = hmac.compare_digest(_hash(salt, secret), stored)
        if row is None or not matches:
            return None
        key = _key(row[:-2])
        return key if key.active(now) else None


def _key(row: tuple[object, ...]) -> ApiKey:
    key_id, name, scopes, region, created_at, expires_at = row
    return ApiKey(str(key_id), str(name), tuple(str(scopes).split(",")), None if region is None else str(region),
                  float(created_at), None if expires_at is None else float(expires_at))  # type: ignore[arg-type]
