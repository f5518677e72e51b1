"""What every benchmark script shares: paths, logging, the machine and the commit measured, quiet waits and
CPU accounting on a shared machine, servers on 127.0.0.1, closed-loop HTTP clients (wrk or a uvloop
client), `--rev` snapshots, number formatting, and the writer of docs/benchmarks.md's marked sections.

    import harness as bench            # from a script in benchmarks/ (its folder is on sys.path)
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import io
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
DOC = ROOT / "docs" / "benchmarks.md"
PY = sys.executable
LUA = BENCH / "wrk.lua"
CLK = os.sysconf("SC_CLK_TCK")


class _Code:
    """Where the foryou package under test lives (the working tree, or a snapshot: see --rev)."""

    dir: Path = ROOT
    desc: str = ""


CODE = _Code()

if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
from ingester import body as events_body  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and the machine

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process, in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, kb = line.split()[:2]
                values[name] = int(kb) / 1024
    return values.get("VmRSS:", float("nan")), values.get("VmHWM:", float("nan"))


def children(pid: int) -> list[int]:
    """The live process's child processes (a server's trainer)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def rss_tree_mb(pid: int) -> float:
    """VmRSS of a live process and its children together, in MiB."""
    return sum(rss_mb(p)[0] for p in (pid, *children(pid)))


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def self_cpu() -> float:
    """CPU seconds this process has used."""
    t = os.times()
    return t.user + t.system


def system_busy() -> float:
    """Core-seconds the whole machine has spent busy (not idle, not waiting on I/O) since boot."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK


QUIET = {"limit_s": 60.0}


def wait_quiet(threshold: float = 0.25) -> float:
    """Waits (at most QUIET['limit_s'] seconds) until other processes use less than `threshold` of a core over
    one second, so that a measurement does not start while, say, a test suite is running; returns the load
    last seen (cores)."""
    deadline = time.perf_counter() + QUIET["limit_s"]
    while True:
        b0 = system_busy()
        time.sleep(1.0)
        other = system_busy() - b0
        if other < threshold or time.perf_counter() > deadline:
            if other >= threshold:
                log(f"  machine still busy ({other:.2f} cores used by other processes): measuring anyway")
            return other


def machine() -> dict[str, str]:
    """The machine, libraries, load generator and commit measured (the --rev snapshot's when there is one)."""
    cpu = mem = "?"
    with contextlib.suppress(OSError):
        cpu = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name")).split(":", 1)[1].strip()
        kb = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        mem = f"{int(kb.split()[1]) / 1024 / 1024:.0f} GiB"
    versions = []
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "orjson", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
    wrk = "-"
    if shutil.which("wrk"):
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "foryou"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    if CODE.desc:
        commit, dirty = CODE.desc, ""
    return {
        "cpu": f"{os.cpu_count()} vCPU {cpu}", "memory": mem, "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "libs": ", ".join(versions), "wrk": wrk,
        "commit": commit + (f" with uncommitted changes in foryou/ ({len(dirty.splitlines())} files)"
                            if dirty else ""),
    }


def command_line(script: str, argv: list[str] | None = None) -> str:
    """How this run was started, as a reader would type it: `python benchmarks/<script> <args>`."""
    args = argv if argv is not None else sys.argv[1:]
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(x) for x in args)])


def provenance(command: str, m: dict[str, str]) -> str:
    """The one line every section of docs/benchmarks.md gives: the command, the commit, when, on what."""
    return (f"Measured with `{command}` at commit {m['commit']}, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, on {m['cpu']}, {m['memory']}, "
            f"Python {m['python']}.")


def use_revision(rev: str) -> None:
    """Benchmark the foryou package as committed at `rev` (a snapshot under benchmarks/out/src-<sha>/, put
    first on the path of this process and of every child) rather than the working tree."""
    import tarfile

    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    target = OUT / f"src-{sha}"
    if not (target / "foryou" / "__init__.py").exists():
        archive = subprocess.run(["git", "archive", sha, "foryou"], cwd=ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, str(target))
    CODE.dir, CODE.desc = target, sha  # the command line shows the --rev


# ---------------------------------------------------------------- servers

def auth(key: str | None) -> dict[str, str]:
    """The header that authenticates a request to the ForYou server (none for servers without keys)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def get(port: int, path: str, timeout: float = 5.0, key: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=auth(key))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, timeout: float = 30.0, key: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **auth(key)})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """A server subprocess on 127.0.0.1; `ready_s` is the time from spawn until `health` answered 200."""

    def __init__(self, name: str, argv: list[str], port: int, health: str, timeout: float = 900.0,
                 cwd: Path = ROOT) -> None:
        self.name, self.port = name, port
        self.log_path = OUT / f"{name}.log"
        self.log_file = self.log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        deadline = started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            with contextlib.suppress(OSError, http.client.HTTPException):
                if get(port, health, timeout=2.0)[0] == 200:
                    break
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not answer {health} within {timeout:.0f}s")
            time.sleep(0.01)
        self.ready_s = time.perf_counter() - started
        self.pid = self.proc.pid

    def wait_for(self, text: str, most_s: float = 300.0) -> float:
        """Wait (at most `most_s`) until the server's output has `text` (the trainer it started prints
        "ForYou trainer:" once it has loaded); returns how long."""
        started = time.perf_counter()
        while time.perf_counter() - started < most_s and self.proc.poll() is None:
            if text in self.log_path.read_text(errors="replace"):
                break
            time.sleep(0.2)
        return time.perf_counter() - started

    def stop(self) -> float:
        """SIGINT (graceful: ForYou checkpoints on the way out), SIGKILL after 120 s; returns seconds taken."""
        started = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return time.perf_counter() - started


def serve_cmd(data: Path, port: int) -> list[str]:
    return [PY, "-m", "foryou.cli", "serve", "--data", str(data), "--host", "127.0.0.1", "--port", str(port)]


def make_key(data: Path) -> str | None:
    """A new admin key in `data`'s keys.db (`foryou keys create`), as a client of the server would use: the
    server looks it up in SQLite and hashes it on every request. None when the code under test has no
    keys (a --rev before authentication): its servers need none."""
    proc = subprocess.run([PY, "-m", "foryou.cli", "keys", "create", "--data", str(data), "--name", "bench",
                           "--scopes", "admin"], cwd=CODE.dir, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        if "invalid choice: 'keys'" in proc.stderr:
            log("  this revision has no API keys: requests go without one")
            return None
        raise RuntimeError(f"foryou keys create failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    said = proc.stdout.strip().splitlines()[-1]  # the key, or (stdout not a terminal) the 0600 file holding it
    return said if said.startswith("fy_") else Path(said).read_text().strip()


# ---------------------------------------------------------------- load generators

@dataclass
class Result:
    name: str
    conns: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    batch: int = 0  # events per request (0: not an ingest row)
    server_cpu: float = float("nan")  # share of one core the server used
    client_cpu: float = float("nan")  # share of one core the load generator used
    other_cpu: float = float("nan")  # cores used by every other process during the measurement
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    @property
    def events_per_s(self) -> float:
        return (self.requests - self.errors) * self.batch / self.seconds if self.seconds and self.batch else 0.0


class Client:
    """Closed-loop HTTP load: wrk (preferred) or a uvloop raw-socket client. `mode` is one of
    ("get", path), ("feed", users, n), ("events", users, items, batch). With `key`, every request carries
    `Authorization: Bearer <key>`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def run(self, name: str, port: int, mode: tuple[Any, ...], conns: int, seconds: float,
            server_pid: int | None = None, quiet: bool = True, key: str | None = None) -> Result:
        """One closed-loop measurement. With a server pid it also records the server's CPU, and (after waiting
        for the machine to be quiet) the CPU every other process used meanwhile."""
        if server_pid and quiet:
            wait_quiet()
        cpu0 = cpu_s(server_pid) if server_pid else 0.0
        busy0, wall0 = system_busy(), time.perf_counter()
        if self.kind == "wrk":
            r = self._wrk(name, port, mode, conns, seconds, key)
        else:
            r = self._python(name, port, mode, conns, seconds, key)
        wall = time.perf_counter() - wall0
        if server_pid:
            server = cpu_s(server_pid) - cpu0
            r.server_cpu = server / r.seconds
            r.other_cpu = max(0.0, (system_busy() - busy0 - server - r.client_cpu * r.seconds) / wall)
        return r

    def _wrk(self, name: str, port: int, mode: tuple[Any, ...], conns: int, seconds: float,
             key: str | None = None) -> Result:
        args = [str(a) for a in mode]
        if mode[0] == "events":
            ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            args = [*args, f"{time.time_ns() % 10**12}", ts]
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(LUA),
               *(f"-H{k}: {v}" for k, v in auth(key).items()), f"http://127.0.0.1:{port}/", "--", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killer = threading.Timer(seconds + 90, proc.kill)  # bounded whatever happens
        killer.start()
        try:
            out = proc.stdout.read().decode() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            killer.cancel()
        line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
        d = orjson.loads(line[8:])
        secs = d["duration_us"] / 1e6
        errors = d["status_errors"] + d["timeouts"] + d["connect_errors"] + d["read_errors"] + d["write_errors"]
        return Result(name, conns, d["requests"], secs, d["p50_us"] / 1000, d["p99_us"] / 1000, errors,
                      batch=int(mode[3]) if mode[0] == "events" else 0,
                      client_cpu=(usage.ru_utime + usage.ru_stime) / secs,
                      extra={"p90_ms": d["p90_us"] / 1000, "p999_ms": d["p999_us"] / 1000,
                             "max_ms": d["max_us"] / 1000, "mean_ms": d["mean_us"] / 1000, "raw": d})

    def _python(self, name: str, port: int, mode: tuple[Any, ...], conns: int, seconds: float,
                key: str | None = None) -> Result:
        import asyncio

        import uvloop

        host = f"Host: 127.0.0.1:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in auth(key).items())
        rng = random.Random(time.time_ns())
        prefix = f"p{time.time_ns() % 10**12}"
        counter = [0]

        def request() -> bytes:
            if mode[0] == "feed":
                return f"GET /v1/users/u{rng.randrange(mode[1])}/feed?n={mode[2]} HTTP/1.1\r\n{host}\r\n".encode()
            if mode[0] == "events":
                counter[0] += 1
                ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                payload = events_body(rng, prefix, counter[0] * mode[3], mode[3], mode[1], mode[2], ts)
                return (f"POST /v1/events HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
            return f"GET {mode[1]} HTTP/1.1\r\n{host}\r\n".encode()

        latencies: list[float] = []
        errors = [0]

        async def one(deadline: float) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                while time.perf_counter() < deadline:
                    req = request()
                    t = time.perf_counter()
                    writer.write(req)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    await reader.readexactly(length)
                    latencies.append(time.perf_counter() - t)
                    if head[9:12] != b"200":
                        errors[0] += 1
            finally:
                writer.close()

        async def main() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(one(start + seconds) for _ in range(conns)))
            return time.perf_counter() - start

        ru0 = os.times()
        secs = uvloop.run(main())
        ru1 = os.times()
        lat = sorted(latencies)
        return Result(name, conns, len(lat), secs, pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000, errors[0],
                      batch=int(mode[3]) if mode[0] == "events" else 0,
                      client_cpu=((ru1.user - ru0.user) + (ru1.system - ru0.system)) / secs)


def pct(sorted_values: list[float], q: float) -> float:
    """The q-quantile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# ---------------------------------------------------------------- numbers and docs/benchmarks.md

def fmt(x: float, digits: int = 1) -> str:
    if x != x:  # nan
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ratio(x: float, floor: float) -> str:
    if not floor or x != x or floor != floor:
        return "-"
    return f"{x / floor:.2f}×" if x / floor < 10 else f"{x / floor:.0f}×"


def replace_section(begin: str, end: str, block: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the text between those
    markers in docs/benchmarks.md, or at its end the first time."""
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(doc, encoding="utf-8")


def replace_scale_section(block: str, key: str, preamble: str) -> None:
    """Put one scale's section (`<!-- scale KEY -->` ... `<!-- /scale KEY -->`) in docs/benchmarks.md: in place
    of that scale's, or among the others in order of scale. The text above the first scale section and below
    the last one is kept; the first time, `preamble` (the introduction to the scale sections) goes before it."""
    sections: dict[str, str] = {}
    head, tail = "# Benchmarks\n\n" + preamble, ""
    if DOC.exists():
        text = DOC.read_text(encoding="utf-8")
        first = text.find("<!-- scale ")
        if first > 0:  # keep the text above the sections (it may have been edited by hand)
            head = text[:first]
        pos = 0
        while True:
            start = text.find("<!-- scale ", pos)
            if start < 0:
                break
            k = text[start + 11:text.index(" -->", start)]
            end_marker = f"<!-- /scale {k} -->\n"
            end = text.find(end_marker, start)
            if end < 0:
                break
            sections[k] = text[start:end + len(end_marker)]
            pos = end + len(end_marker)
        tail = text[pos:] if sections else ""  # what follows the scales (the other sections) is kept
        if first < 0:
            head = text.rstrip("\n") + "\n\n" + preamble
    sections[key] = block

    def order(k: str) -> tuple[int, ...]:
        return tuple(int(part.split("=")[1]) for part in k.split())

    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(head + "\n".join(sections[k] for k in sorted(sections, key=order)) + tail, encoding="utf-8")
