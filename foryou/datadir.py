"""The data directory and its files, which hold user data or secrets: the directory is 0700 and every
file in it is created 0600, never created wider and narrowed afterwards (a reader could open it in
between). SQLite gives a database's -wal and -shm files the database's own mode, so creating the
database file first covers them. Locks on the directory keep a server, a trainer and the commands that
must not run beside them (`load`, `retrain`, `retention run`) apart."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from foryou.errors import ForYouError

DIR_MODE, FILE_MODE = 0o700, 0o600
LOCK_FILE = "foryou.lock"  # held (flock) by a server, and by commands that must not run beside one
TRAINER_LOCK = "trainer.lock"  # held by the one trainer process of a data directory


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; an existing directory is narrowed to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        with contextlib.suppress(PermissionError):  # not ours (a shared parent): leave it
            path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty as 0600 unless it exists; narrow an existing one (made by an earlier
    version) to 0600. An existing file is never opened here: closing any descriptor of a file drops
    every POSIX lock this process holds on it, SQLite's included, so a second store handle opened
    beside the first let another process take a database's locks under it (a corrupted `model.db`
    after a few starts and stops of `foryou serve` with its trainer)."""
    if not path.exists():
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


@contextlib.contextmanager
def _flock(path: Path, busy: str) -> Iterator[None]:
    with open(private_file(path), "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ForYouError(busy, field="--data") from None
        yield


@contextlib.contextmanager
def exclusive(data: str | Path, doing: str, model: bool = True) -> Iterator[None]:
    """Hold the data directory's lock: one server at a time, and `load`, `retrain` and `retention run`
    never beside a server (whose live state would not see their writes). With `model`, the trainer's
    lock too: no trainer process may write the model meanwhile. `keys` needs no lock."""
    directory = private_dir(Path(data))
    with _flock(directory / LOCK_FILE, f"another foryou process (a server?) is using {directory}: stop it before "
                                       f"{doing}"):
        if model:
            with model_lock(data, doing):
                yield
        else:
            yield


def model_lock(data: str | Path, doing: str) -> contextlib.AbstractContextManager[None]:
    """The trainer's lock: held by the one process that writes the learned model."""
    directory = private_dir(Path(data))
    return _flock(directory / TRAINER_LOCK, f"a trainer process is running on {directory}: stop it before {doing}")
