"""The audit log across files (issue 12, item 7): rotation into immutable segments with the hash chain
carried over, pages that seek instead of reading from the first record, and a verify that walks every
segment. The single-file chain, the fail-closed calls and `GET /v1/audit` are in tests/test_privacy.py."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import orjson
import pytest

from foryou import cli
from foryou.config import load_settings
from foryou.errors import Unavailable
from foryou.privacy import audit, open_audit, verify
from foryou.privacy.audit import AuditLog, segment_name

KEY = b"k" * 32
T0 = 1_700_000_000.0


def fill(log: AuditLog, n: int, action: str = "export") -> None:
    for k in range(n):
        log.append(action, f"user{k}", "ok", T0 + k)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit-*.log"))


def full_read(directory: Path) -> list[dict[str, object]]:
    """Every record, the naive way: each file from its first line."""
    out = []
    for path in [*segments(directory), directory / "audit.log"]:
        out += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return out


def rotated(directory: Path, n: int = 100, rotate_bytes: int = 2000) -> AuditLog:
    log = AuditLog(directory, KEY, rotate_bytes=rotate_bytes)
    fill(log, n)
    assert len(segments(directory)) >= 3, "the test needs several segments"
    return log


def first_seq(path: Path) -> int:
    return int(orjson.loads(path.read_bytes().splitlines()[0])["seq"])


# -- rotation --
def test_rotation_carries_the_chain_across_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rotated(tmp_path)
    files = [*segments(tmp_path), tmp_path / "audit.log"]
    assert files[0].name == "audit-000000000001.log"
    for path in files[:-1]:
        assert path.name == segment_name(first_seq(path))  # named by its first record
        assert 2000 <= path.stat().st_size < 2000 + len(path.read_bytes().splitlines()[-1]) + 1
    for before, after in itertools.pairwise(files):
        last = orjson.loads(before.read_bytes().splitlines()[-1])
        first = orjson.loads(after.read_bytes().splitlines()[0])
        assert (first["seq"], first["prev"]) == (int(str(last["seq"])) + 1, last["hash"])  # the chain goes on
    records = full_read(tmp_path)
    assert [r["seq"] for r in records] == list(range(1, 101))
    verdict = verify(tmp_path)
    assert (verdict.problem, verdict.records, verdict.files) == (None, 100, len(files))
    assert verdict.head == f"100:{records[-1]['hash']}"
    assert cli.main(["audit", "verify", "--data", str(tmp_path), "--anchor", "50:" + str(records[49]["hash"])]) == 0
    assert f"intact, 100 records in {len(files)} files; head 100:" in capsys.readouterr().out


def test_no_rotation_by_default(tmp_path: Path) -> None:
    fill(AuditLog(tmp_path, KEY), 50)
    assert segments(tmp_path) == [] and verify(tmp_path).records == 50


def test_the_setting_reaches_the_log(tmp_path: Path) -> None:
    settings = load_settings(overrides={"server.data": str(tmp_path), "privacy.audit_rotate_mb": 0.5}, env={})
    assert open_audit(settings).rotate_bytes == 512 * 1024
    settings = load_settings(overrides={"server.data": str(tmp_path), "privacy.audit_rotate_mb": 0}, env={})
    assert open_audit(settings).rotate_bytes == 0


def test_audit_files_are_private_from_creation(tmp_path: Path) -> None:
    old = os.umask(0)  # a file created without an explicit mode would come out 0666
    try:
        log = rotated(tmp_path)
        with log.recording("export", "amy", T0):
            pass
        log.page(0, 10)
    finally:
        os.umask(old)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert {"audit.log", "audit.head", "audit.lock", "audit-000000000001.log"} <= set(names)
    assert {name: (tmp_path / name).stat().st_mode & 0o777 for name in names} == dict.fromkeys(names, 0o600)


# -- verify across files --
def _edit(path: Path, line: int) -> int:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line] = lines[line].replace(b'"outcome":"ok"', b'"outcome":"NotFound"')
    path.write_bytes(b"".join(lines))
    return int(orjson.loads(lines[line])["seq"])


def test_an_edited_record_in_a_segment_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rotated(tmp_path)
    segment = segments(tmp_path)[1]
    seq = _edit(segment, 2)
    problem = verify(tmp_path).problem
    assert problem == f"record {seq} in {segment.name}: its hash does not match (the record was edited)"
    assert cli.main(["audit", "verify", "--data", str(tmp_path)]) == 1
    assert segment.name in capsys.readouterr().err


@pytest.mark.parametrize("which", [0, 1, -1])
def test_a_deleted_segment_is_caught(tmp_path: Path, which: int) -> None:
    rotated(tmp_path)
    gone = segments(tmp_path)[which]
    first = first_seq(gone)
    gone.unlink()  # also what archiving old segments elsewhere looks like
    problem = str(verify(tmp_path).problem)
    if which == -1:  # the current log then follows the segment before the gap
        assert problem.startswith(f"record {first}: found seq ")
    else:
        following = segments(tmp_path)[which]
        assert problem == (f"record {first}: the next segment, {following.name}, starts at record "
                           f"{first_seq(following)} (a segment was deleted, moved away, added or cut off)")


def test_a_segment_cut_off_or_emptied_is_caught(tmp_path: Path) -> None:
    rotated(tmp_path)
    first, second = segments(tmp_path)[:2]
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[:-2]))
    assert str(verify(tmp_path).problem).startswith(f"record {len(lines) - 1}: the next segment, {second.name}")
    first.write_bytes(b"")
    assert verify(tmp_path).problem == "record 1: audit-000000000001.log is empty (a segment never is: it was cut off)"


def test_a_cut_off_current_file_with_its_head_intact_is_caught(tmp_path: Path) -> None:
    rotated(tmp_path)
    log = tmp_path / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 2
    log.write_bytes(b"".join(lines[:-1]))
    assert verify(tmp_path).problem == ("the log ends at record 99 but the head names record 100 "
                                        "(the log was cut off, or the head replaced)")
    log.write_bytes(b"")  # emptied: the chain ends with the last segment
    last = segments(tmp_path)[-1]
    end = first_seq(last) + len(last.read_bytes().splitlines()) - 1
    assert str(verify(tmp_path).problem).startswith(f"the log ends at record {end} but the head names record 100")


def test_an_anchor_in_a_rewritten_segment_is_caught(tmp_path: Path) -> None:
    rotated(tmp_path)
    anchor = verify(tmp_path).head
    for path in [*segments(tmp_path)[1:], tmp_path / "audit.log"]:  # cut back to the first segment...
        path.unlink()
    last = orjson.loads(segments(tmp_path)[0].read_bytes().splitlines()[-1])
    (tmp_path / "audit.head").write_bytes(orjson.dumps({"seq": last["seq"], "hash": last["hash"]}))  # ...and hidden
    assert verify(tmp_path).problem is None  # the documented limit of the files alone
    assert "before the anchor's record 100" in str(verify(tmp_path, anchor).problem)


# -- paging --
def test_pages_across_segments_equal_a_full_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "STRIDE", 4)  # many marks per file, so that seeking is exercised
    log = rotated(tmp_path, 120, rotate_bytes=3000)
    fresh = AuditLog(tmp_path, KEY)  # another process's view: its index is built from the files
    starts = [first_seq(path) for path in segments(tmp_path)]
    afters = sorted({*range(0, 125, 7), *(s + d for s in starts for d in (-2, -1, 0, 1)), 119, 120, 121, 500})
    for reader in (log, fresh):
        everything = full_read(tmp_path)
        for after in afters:
            for limit in (1, 2, 5, 17, 60, 400):
                expected = [r for r in everything if int(str(r["seq"])) > after][:limit]
                assert reader.page(after, limit) == expected, (after, limit)
    fill(log, 40)  # grown and rotated since both last looked: their indexes follow
    everything = full_read(tmp_path)
    for reader in (log, fresh):
        for after in (0, 100, 118, 130, 150, 159):
            assert reader.page(after, 30) == [r for r in everything if int(str(r["seq"])) > after][:30]


def write_long_log(directory: Path, n: int, per_file: int) -> None:
    """A log of `n` records in files of `per_file`, written at once (20,000 fsynced appends take a while);
    the tests check it with verify, so it is the log appends would have made."""
    prev, lines = "0" * 64, []
    for seq in range(1, n + 1):
        body: dict[str, object] = {"seq": seq, "ts": "2023-11-14T22:13:20Z", "key": None, "action": "export",
                                   "subject": None, "outcome": "ok", "prev": prev}
        prev = audit._digest(prev, body)
        lines.append(orjson.dumps({**body, "hash": prev}) + b"\n")
    for start in range(0, n, per_file):
        name = segment_name(start + 1) if start + per_file < n else "audit.log"
        (directory / name).write_bytes(b"".join(lines[start:start + per_file]))
    (directory / "audit.head").write_bytes(orjson.dumps({"seq": n, "hash": prev}))


def test_a_page_near_the_end_of_a_long_log_parses_few_records(tmp_path: Path) -> None:
    write_long_log(tmp_path, 20_000, 3_000)
    assert verify(tmp_path).problem is None and verify(tmp_path).files == 7
    writer = AuditLog(tmp_path, KEY, rotate_bytes=(tmp_path / "audit.log").stat().st_size + 20_000)
    everything = full_read(tmp_path)
    reader = AuditLog(tmp_path, KEY)
    assert reader.page(19_990, 5) == everything[19_990:19_995]
    # the first page indexes the current log: one parse per STRIDE records, then at most STRIDE + limit
    assert reader.decoded <= 20_000 // audit.STRIDE + audit.STRIDE + 5
    before = reader.decoded
    assert reader.page(19_990, 5) == everything[19_990:19_995]
    assert reader.decoded - before <= audit.STRIDE + 5
    fill(writer, 300)  # grown and rotated since: only what is new is indexed
    assert len(segments(tmp_path)) == 7
    everything = full_read(tmp_path)
    before = reader.decoded
    assert reader.page(20_250, 5) == everything[20_250:20_255]
    assert reader.decoded - before <= audit.STRIDE + 5 + 300 // audit.STRIDE + 1
    before = reader.decoded
    assert reader.page(10_000, 10) == everything[10_000:10_010]  # in a segment: found by its name
    assert reader.decoded - before <= audit.STRIDE + 10 + 20_000 // audit.STRIDE
    before = reader.decoded
    assert reader.page(10_000, 10) == everything[10_000:10_010]
    assert reader.decoded - before <= audit.STRIDE + 10


def test_a_damaged_line_in_a_segment_stops_pages_that_read_it(tmp_path: Path) -> None:
    log = rotated(tmp_path)
    segment = segments(tmp_path)[1]
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[1] = b"not json\n"
    segment.write_bytes(b"".join(lines))
    with pytest.raises(Unavailable, match="damaged"):
        AuditLog(tmp_path, KEY).page(0, 1000)
    with pytest.raises(Unavailable, match="damaged"):
        log.page(0, 1000)  # an index built before the damage does not hide it
    assert [r["seq"] for r in log.page(99, 10)] == [100]  # pages after it still work


# -- two writers --
def test_two_writers_interleaved_through_rotations_keep_one_chain(tmp_path: Path) -> None:
    server, command_line = AuditLog(tmp_path, KEY, rotate_bytes=1500), AuditLog(tmp_path, KEY, rotate_bytes=1500)
    for k in range(60):  # in turn, as a `foryou keys` run while a server appends
        (server if k % 3 else command_line).append("export" if k % 3 else "key_create", None, "ok", T0 + k)
        assert server.page(k, 1)[0]["seq"] == k + 1
    assert [r["seq"] for r in command_line.page(0, 1000)] == list(range(1, 61))
    verdict = verify(tmp_path)
    assert (verdict.problem, verdict.records) == (None, 60) and verdict.files >= 4


def test_two_writers_at_once_through_rotations_keep_one_chain(tmp_path: Path) -> None:
    writers = [AuditLog(tmp_path, KEY, rotate_bytes=1000) for _ in range(2)]
    start = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def run(log: AuditLog, name: str) -> None:
        try:
            start.wait()
            for k in range(80):
                log.append(name, None, "ok", T0 + k)
                log.page(max(0, k - 3), 5)
        except BaseException as exc:  # reported below: a thread's failure would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(log, f"w{n}")) for n, log in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    verdict = verify(tmp_path)
    assert (verdict.problem, verdict.records) == (None, 160) and verdict.files >= 8
    records = full_read(tmp_path)
    assert sorted(str(r["action"]) for r in records) == ["w0"] * 80 + ["w1"] * 80


# -- fail closed --
def test_recording_refuses_before_acting_when_the_lock_cannot_be_opened(tmp_path: Path) -> None:
    log = rotated(tmp_path)
    (tmp_path / "audit.lock").unlink()
    (tmp_path / "audit.lock").mkdir()  # as on a failed disk
    ran = []
    with pytest.raises(Unavailable, match="cannot be written"), log.recording("erase", "amy", T0):
        ran.append(1)
    assert ran == []
    (tmp_path / "audit.lock").rmdir()
    with log.recording("erase", "amy", T0):
        ran.append(1)
    assert ran == [1] and log.page(100, 5)[0]["action"] == "erase" and verify(tmp_path).problem is None


def test_recording_works_right_after_a_rotation(tmp_path: Path) -> None:
    log = rotated(tmp_path)
    (tmp_path / "audit.log").rename(tmp_path / segment_name(first_seq(tmp_path / "audit.log")))  # no audit.log
    assert verify(tmp_path).problem is None
    with log.recording("export", "amy", T0):
        pass
    assert verify(tmp_path).problem is None and verify(tmp_path).records == 101

