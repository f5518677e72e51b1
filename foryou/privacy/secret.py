"""The privacy secret: the key of every keyed hash of a user id (audit subjects, erasure tombstones,
events' idempotency keys). Whoever holds it can link those hashes back to ids they can guess, so it
need not sit beside the data: `privacy.secret` (or `FORYOU_PRIVACY_SECRET`) gives it as a value and
wins; else it is read from `privacy.secret_file` (default `privacy.key` in the data directory), which
is created with 32 random bytes on first use."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from foryou.config import ConfigError, Settings
from foryou.datadir import private_dir, write_private

FILE = "privacy.key"
MIN_SECRET = 32  # characters of a secret given as a value
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def secret_path(settings: Settings) -> Path:
    return Path(settings.privacy.secret_file or Path(settings.server.data) / FILE)


def privacy_secret(settings: Settings) -> bytes:
    """The secret's bytes. A value of 64 hex digits is those 32 bytes, so that a deployment can move
    its `privacy.key` into a secret store without changing a hash (`xxd -p -c 64 privacy.key`)."""
    value = settings.privacy.secret
    if value:
        if _HEX.fullmatch(value):
            return bytes.fromhex(value)
        if len(value) < MIN_SECRET:
            raise ConfigError(f"privacy.secret must be at least {MIN_SECRET} characters (or 64 hex digits)",
                              field="privacy.secret")
        return value.encode()
    path = secret_path(settings)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not path.parent.exists():  # made private; an operator's existing directory is left as it is
            private_dir(path.parent)
        key = secrets.token_bytes(32)
        try:
            write_private(path, key, exclusive=True)
        except FileExistsError:  # another process made it meanwhile: theirs is the one
            return path.read_bytes()
        return key
