"""The data directory and its files, which hold user data or secrets: the directory is 0700 and every
file in it is created 0600, never created wider and narrowed afterwards (a reader could open it in
between). SQLite gives a database's -wal and -shm files the database's own mode, so creating the
database file first covers them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE, FILE_MODE = 0o700, 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; an existing directory is narrowed to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        with contextlib.suppress(PermissionError):  # not ours (a shared parent): leave it
            path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty as 0600 unless it exists; narrow an existing one (made by an earlier
    version) to 0600."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    if path.stat().st_mode & 0o777 != FILE_MODE:
        path.chmod(FILE_MODE)
    return path


def write_private(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write `data` to a new 0600 file (`exclusive`: fail if it exists), durably."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a file that existed keeps its mode otherwise: narrowed before it is written
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
