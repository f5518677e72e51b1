"""Secrets and files (issue 12): keys the command line makes reach a terminal or a 0600 file, never a
log; the data directory is 0700 and every file in it 0600 from creation; the privacy secret may live
outside the data directory, or be given as a value, which wins."""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeClient

from foryou import cli
from foryou.config import ConfigError, load_settings
from foryou.engine import Engine
from foryou.privacy import privacy_secret
from foryou.privacy.keys import KeyRing
from foryou.privacy.secret import FILE
from foryou.types import EventIn, ItemIn


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """A umask that would leave new files readable by everyone: the modes must not depend on it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_keys_go_to_a_terminal_or_a_private_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, wide_umask: None) -> None:
    data = tmp_path / "d"
    args = ["keys", "create", "--data", str(data), "--name", "app", "--scopes", "feed"]
    # stdout is not a terminal (a pipe, a service's log): the key goes to a new 0600 file, its path is said
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    path = Path(out.strip())
    assert path.parent == data and re.fullmatch(r"key-\w+\.txt", path.name)
    token = path.read_text().strip()
    assert token.startswith("fy_") and token not in out + err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing(data)
    assert ring.authenticate(token, time.time()) is not None and token.split("_")[1] in path.name
    ring.close()
    # --key-file chooses the file (and narrows one that was there)
    chosen = tmp_path / "secrets" / "ingest.key"
    chosen.parent.mkdir()
    chosen.write_text("old")
    chosen.chmod(0o644)
    assert cli.main([*args, "--key-file", str(chosen)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(chosen) and stat.S_IMODE(chosen.stat().st_mode) == 0o600
    assert chosen.read_text().startswith("fy_") and chosen.read_text().strip() not in out + err
    # on a terminal the key is shown, and no file is written
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    before = set(data.iterdir())
    assert cli.main(args) == 0
    out, _ = capsys.readouterr()
    assert re.fullmatch(r"fy_\w+", out.strip()) and set(data.iterdir()) == before


def test_the_data_directory_is_private_from_creation(tmp_path: Path, make_client: MakeClient,
                                                     capsys: pytest.CaptureFixture[str], wide_umask: None) -> None:
    data = tmp_path / "d"
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "creator": "c", "duration_s": 10}\n')
    assert cli.main(["load", "--items", str(items), "--data", str(data), "--quiet"]) == 0  # the lock file
    assert cli.main(["keys", "create", "--data", str(data), "--name", "x", "--scopes", "feed"]) == 0
    client = make_client(data=data, **{"server.regions": "us,eu"})
    client.post("/v1/items", json={"items": [{"id": f"v{k}", "creator": "c", "duration_s": 10} for k in range(30)]})
    events = [{"user": f"u{k % 5}", "item": f"v{k}", "type": "view", "watch_s": 10} for k in range(30)]
    client.post("/v1/events", json={"events": events})
    assert client.get("/v1/users/u1/data").status_code == 200  # audited
    engine = client.app.state.engine  # type: ignore[attr-defined]
    engine.close()  # checkpoints, and writes the ANN index
    capsys.readouterr()
    names = {p.name for p in data.iterdir()}
    assert {"catalog.db", "region-us.db", "region-eu.db", "region-us-model.db", "keys.db", "foryou.lock", "audit.log",
            "audit.head", "privacy.key", "ann-index.bin"} <= names
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in data.rglob("*")
             if p.is_file() and stat.S_IMODE(p.stat().st_mode) != 0o600}
    assert not loose, loose


def test_an_existing_wide_data_directory_is_narrowed(tmp_path: Path, wide_umask: None) -> None:
    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    (data / "catalog.db").touch(mode=0o644)
    Engine.open(load_settings(overrides={"server.data": str(data)}, env={})).close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "catalog.db").stat().st_mode) == 0o600


def _erase_and_reopen(settings_env: dict[str, str], data: Path) -> Engine:
    settings = load_settings(overrides={"server.data": str(data), "learning.enabled": False}, env=settings_env)
    return Engine.open(settings)


def test_the_privacy_secret_can_live_outside_the_data_directory(tmp_path: Path) -> None:
    data, vault = tmp_path / "d", tmp_path / "vault" / "privacy.key"
    env = {"FORYOU_PRIVACY_SECRET_FILE": str(vault)}
    engine = _erase_and_reopen(env, data)
    engine.items.upsert([ItemIn(id="a", creator="c", duration_s=10)])
    engine.events.ingest([EventIn(user="amy", item="a", type="like")])
    engine.erasure.erase("amy")
    engine.close()
    assert not (data / FILE).exists() and stat.S_IMODE(vault.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault.parent.stat().st_mode) == 0o700
    engine = _erase_and_reopen(env, data)  # the same secret again: the tombstone still refuses amy
    with pytest.raises(Exception, match="was erased"):
        engine.events.ingest([EventIn(user="amy", item="a", type="like")])
    engine.close()
    audit = (data / "audit.log").read_text()
    assert engine.audit.subject("amy") in audit and "amy" not in audit


def test_a_secret_given_as_a_value_wins_and_is_never_shown(tmp_path: Path, make_client: MakeClient) -> None:
    value = "a" * 64  # 64 hex digits: these 32 bytes
    settings = load_settings(overrides={"server.data": str(tmp_path / "d")},
                             env={"FORYOU_PRIVACY_SECRET": value, "FORYOU_PRIVACY_SECRET_FILE": str(tmp_path / "f")})
    assert privacy_secret(settings) == bytes.fromhex(value)
    assert not (tmp_path / "f").exists()
    phrase = "correct horse battery staple and more words"
    assert privacy_secret(load_settings(overrides={"privacy.secret": phrase}, env={})) == phrase.encode()
    with pytest.raises(ConfigError, match="at least 32"):
        privacy_secret(load_settings(overrides={"privacy.secret": "short"}, env={}))
    client = make_client(**{"privacy.secret": phrase})
    card = client.get("/v1/algorithm").text
    assert phrase not in card and "secret" not in card


def test_making_a_file_private_keeps_this_process_s_locks_on_it(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included: a second store handle making the data directory's files private must not open an existing
    one (it let another process write a database under this one's locks: a corrupted `model.db`)."""
    import fcntl
    import subprocess

    from foryou.datadir import private_file

    path = private_file(tmp_path / "x.db")
    with open(path, "r+b") as held:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as SQLite locks a database's bytes
        private_file(path)
        probe = "import fcntl, sys; fcntl.lockf(open(sys.argv[1], 'r+b'), fcntl.LOCK_EX | fcntl.LOCK_NB)"
        taken = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, timeout=60)
        assert taken.returncode != 0, "another process took the lock this one holds"
