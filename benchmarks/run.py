#!/usr/bin/env python3
"""ForYou benchmarks: one run prints, side by side,

  (a) the floor: a trivial FastAPI route under the same uvicorn options (uvloop + httptools, no access log)
  (b) GET /v1/users/{id}/feed?n=10 over HTTP at 16 concurrent connections
  (c) feed in-process (engine.feeds.feed)
  (d) POST /v1/events in batches of 1,000 over HTTP
  plus the mixed run (feeds over HTTP while another client ingests 10,000 events/s), bulk-loader
  throughput (`foryou load`), start-up time (Engine.open, and `foryou serve` until /healthz answers),
  resident memory, and a profile of where the time goes. Latency and throughput are given with their
  ratio to the floor. Results go to stdout and into docs/benchmarks.md (one section per scale).

    python benchmarks/run.py --quick                      # 20k items, 10k users, 200k events (~2 min)
    python benchmarks/run.py                              # 100k items, 100k users, 5M events
    python benchmarks/run.py --items 1000000              # 1M items, 100k users, 5M events

Synthetic data (benchmarks/gen.py) and the loaded data directory live under benchmarks/out/ (ignored
by git). Servers listen on 127.0.0.1 only; every request loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import importlib.metadata
import io
import os
import platform
import pstats
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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

sys.path.insert(0, str(BENCH))
from gen import generate  # noqa: E402
from ingester import body as events_body  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

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


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


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
        return Result(name, conns, len(lat), secs, _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000, errors[0],
                      batch=int(mode[3]) if mode[0] == "events" else 0,
                      client_cpu=((ru1.user - ru0.user) + (ru1.system - ru0.system)) / secs)


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# ---------------------------------------------------------------- profiles

def _short(path: str) -> str:
    """Module-relative paths as py-spy prints them (`foryou/feed.py`, `starlette/routing.py`)."""
    if not path.startswith("/"):
        return path
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    for base in (str(CODE.dir), str(ROOT)):
        if path.startswith(base + "/"):
            return path[len(base) + 1:]
    return path.rsplit("/", 1)[-1]


def _frame(frame: str, keep_line: bool) -> str:
    """'func (path:line)' -> 'func (short path[:line])'."""
    if " (" not in frame:
        return frame
    func, where = frame.rsplit(" (", 1)
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    if not path:
        path, line = where, ""
    return f"{func} ({_short(path)}{':' + line if keep_line and line else ''})"


@dataclass
class Profile:
    """Where the time goes: shares of sampled (busy) time."""

    title: str
    source: str
    samples: int
    self_fn: list[tuple[str, float]]  # function -> share of samples where it is on top (incl. C calls it makes)
    incl_fn: list[tuple[str, float]]  # foryou function -> share of samples where it is on the stack
    self_line: list[tuple[str, float]]  # line -> self share
    by_module: list[tuple[str, float]] = field(default_factory=list)  # ForYou file or other package -> self


def parse_pyspy(path: Path, title: str, top: int = 12) -> Profile | None:
    if not path.exists():
        return None
    self_fn: dict[str, int] = {}
    self_line: dict[str, int] = {}
    by_module: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for raw in path.read_text().splitlines():
        stack, _, count_s = raw.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_fn[_frame(leaf, False)] = self_fn.get(_frame(leaf, False), 0) + count
        self_line[_frame(leaf, True)] = self_line.get(_frame(leaf, True), 0) + count
        module = _module(leaf)
        by_module[module] = by_module.get(module, 0) + count
        for fn in {_frame(f, False) for f in frames}:
            incl[fn] = incl.get(fn, 0) + count
    if not total:
        return None

    def best(d: dict[str, int], keep: Callable[[str], bool] = lambda _: True) -> list[tuple[str, float]]:
        return sorted(((k, v / total) for k, v in d.items() if keep(k)), key=lambda kv: -kv[1])[:top]

    return Profile(title, "py-spy", total, best(self_fn),
                   best(incl, lambda k: "(foryou/" in k and "cli.py" not in k), best(self_line),
                   best(by_module))


def _module(frame: str) -> str:
    """A frame's ForYou file, or the top-level package of anything else."""
    where = frame.rsplit(" (", 1)[-1].rstrip(")").rpartition(":")[0] if " (" in frame else frame
    short = _short(where)
    if short.startswith("foryou/"):
        return short
    if short.startswith("<frozen "):
        return short.split()[1].rstrip(">").split(".")[0] + " (stdlib)"
    return short.split("/", 1)[0].removesuffix(".py")


def pyspy_available() -> bool:
    return shutil.which("py-spy") is not None or (Path(PY).parent / "py-spy").exists()


def pyspy_cmd() -> str:
    local = Path(PY).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


def start_pyspy(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    out.unlink(missing_ok=True)
    return subprocess.Popen([pyspy_cmd(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                             "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cprofile_summary(prof: cProfile.Profile, title: str, top: int = 12) -> Profile:
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = stats.stats  # type: ignore[attr-defined]
    total = max([stats.total_tt, *(v[3] for v in rows.values())]) or 1e-9  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        path, line, func = key
        return f"{func} ({_short(path)}:{line})" if path != "~" else func

    tot = sorted(((name(k), v[2] / total) for k, v in rows.items()), key=lambda kv: -kv[1])[:top]
    cum = sorted(((name(k), v[3] / total) for k, v in rows.items() if "/foryou/" in k[0]),
                 key=lambda kv: -kv[1])[:top]
    calls = sum(v[1] for v in rows.values())
    return Profile(title, "cProfile", calls, tot, cum, [])


# ---------------------------------------------------------------- phases

def run_load(data: Path, items: Path, events: Path, profile: bool, timeout: float) -> dict[str, Any]:
    """`foryou load` twice (items, then events) into a fresh data directory, each in its own process."""
    if data.exists():
        shutil.rmtree(data)
    out: dict[str, Any] = {}
    for what, path in (("items", items), ("events", events)):
        rows = sum(1 for _ in path.open("rb"))
        cmd = [PY, "-m", "foryou.cli", "load", "--data", str(data), f"--{what}", str(path), "--quiet"]
        log(f"bulk load: {what} ({rows:,} rows)")
        wait_quiet()
        busy0 = system_busy()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=CODE.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        spy = None
        if profile and what == "events" and pyspy_available():
            time.sleep(min(3.0, max(0.5, rows / 400_000)))
            if proc.poll() is None:
                spy = start_pyspy(proc.pid, timeout, OUT / "profile-bulk.txt", rate=50)  # the whole load
        text = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        took = time.perf_counter() - started
        if took >= timeout:
            raise RuntimeError(f"foryou load --{what} ran past --load-timeout ({timeout:.0f}s) and was killed; "
                               f"see {OUT / 'profile-bulk.txt'} for where it spent its time")
        if spy is not None:
            spy.wait(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"foryou load failed: {' '.join(cmd)}\n{text[-3000:]}")
        own = usage.ru_utime + usage.ru_stime
        out[what] = {"rows": rows, "seconds": took, "per_s": rows / took, "peak_rss_mb": usage.ru_maxrss / 1024,
                     "cpu": own / took, "other_cpu": max(0.0, (system_busy() - busy0 - own) / took),
                     "output": text.strip().splitlines()[-1] if text.strip() else ""}
        log(f"  {rows:,} {what} in {took:.1f}s = {rows / took:,.0f}/s ({out[what]['output']})")
    return out


_OPEN_SNIPPET = """
import json, resource, sys, time
t0 = time.perf_counter()
from foryou.config import load_settings
from foryou.engine import Engine
t1 = time.perf_counter()
engine = Engine.open(load_settings(overrides={"server.data": sys.argv[1]}))
t2 = time.perf_counter()
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")][0] / 1024
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "rss_mb": rss,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "items": len(engine.live.catalog)}))
engine.store.close()
"""


def run_open(data: Path) -> dict[str, Any]:
    """Engine.open on the loaded data directory, in a fresh process (no checkpoint on exit)."""
    proc = subprocess.run([PY, "-c", _OPEN_SNIPPET, str(data)], cwd=CODE.dir, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"Engine.open failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


def profile_open(data: Path) -> Profile | None:
    """A second Engine.open under py-spy (the timed one above runs without it)."""
    out = OUT / "profile-open.txt"
    out.unlink(missing_ok=True)
    subprocess.run([pyspy_cmd(), "record", "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out),
                    "--", PY, "-c", _OPEN_SNIPPET, str(data)], cwd=CODE.dir, capture_output=True, timeout=900)
    return parse_pyspy(out, "start-up: `Engine.open` on the loaded data directory (fresh process)")


def uvicorn_floor(port: int) -> list[str]:
    return [PY, "-m", "uvicorn", "--app-dir", str(BENCH), "floor_app:app", "--host", "127.0.0.1", "--port",
            str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


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


def serve_cmd(data: Path, port: int) -> list[str]:
    return [PY, "-m", "foryou.cli", "serve", "--data", str(data), "--host", "127.0.0.1", "--port", str(port)]


def sanity(port: int, users: int, items: int, key: str | None = None) -> str:
    """One feed and one small event batch through the real API, checked, before timing anything."""
    status, raw = get(port, "/v1/users/u1/feed?n=10", timeout=60, key=key)
    if status != 200:
        raise RuntimeError(f"feed answered {status}: {raw[:500]!r}")
    got = len(orjson.loads(raw)["items"])
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    payload = events_body(random.Random(1), f"s{time.time_ns()}", 0, 10, users, items, ts)
    status, raw = post(port, "/v1/events", payload, key=key)
    if status != 200:
        raise RuntimeError(f"events answered {status}: {raw[:500]!r}")
    return f"feed returned {got} items; events: {raw.decode()}"


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _open_engine(data: Path) -> Any:
    from foryou.config import load_settings
    from foryou.engine import Engine

    return Engine.open(load_settings(overrides={"server.data": str(data)}))


def inprocess_feed(data: Path, users: int, seconds: float, warmup: float, max_feeds: int,
                   profile: bool) -> tuple[Result, list[Profile]]:
    """(c): engine.feeds.feed(random user, 10), one call at a time, after a warm-up."""
    rng = random.Random(11)
    profiles: list[Profile] = []
    engine = _open_engine(data)
    try:
        feed = engine.feeds.feed
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            feed(f"u{rng.randrange(users)}", 10)
        lat: list[float] = []
        wait_quiet()
        busy0, cpu0 = system_busy(), _self_cpu()
        t_end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while len(lat) < max_feeds and time.perf_counter() < t_end:
            uid = f"u{rng.randrange(users)}"
            t = time.perf_counter()
            feed(uid, 10)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        lat.sort()
        own = _self_cpu() - cpu0
        row = Result("(c) feed, in-process", 1, len(lat), total, _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000,
                     server_cpu=own / total, other_cpu=max(0.0, (system_busy() - busy0 - own) / total),
                     extra={"mean_ms": 1000 * sum(lat) / len(lat)})
        if profile:
            n = min(500, max(50, len(lat)))
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                feed(f"u{rng.randrange(users)}", 10)
            prof.disable()
            profiles.append(cprofile_summary(prof, f"feed, in-process ({n} feeds)"))
    finally:
        engine.close()
    return row, profiles


def inprocess_ingest(data: Path, users: int, items: int, seconds: float, warmup: float, batch: int,
                     profile: bool) -> tuple[Result, list[Profile]]:
    """(e): the API's parse + validation (EventBatch.model_validate_json) and engine.events.ingest, per batch;
    building the JSON bodies is not timed."""
    from foryou.types import EventBatch

    rng = random.Random(13)
    prefix = f"ip{time.time_ns() % 10**12}"
    counter = [0]

    def payload() -> bytes:
        counter[0] += 1
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return events_body(rng, prefix, counter[0] * batch, batch, users, items, ts)

    profiles: list[Profile] = []
    engine = _open_engine(data)
    try:
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            engine.events.ingest(EventBatch.model_validate_json(payload()).events)
        lat: list[float] = []
        wait_quiet()
        busy0, cpu0, wall0 = system_busy(), _self_cpu(), time.perf_counter()
        t_end = time.perf_counter() + seconds
        while len(lat) < 10 or (len(lat) < 500 and time.perf_counter() < t_end):
            raw = payload()
            t = time.perf_counter()
            engine.events.ingest(EventBatch.model_validate_json(raw).events)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - wall0
        own = _self_cpu() - cpu0
        busy = sum(lat)
        lat.sort()
        row = Result(f"(e) POST body validate + ingest in-process, {batch}/batch", 1, len(lat), busy,
                     _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000, batch=batch, server_cpu=own / wall,
                     other_cpu=max(0.0, (system_busy() - busy0 - own) / wall))
        if profile:
            bodies = [payload() for _ in range(20)]
            prof = cProfile.Profile()
            prof.enable()
            for raw in bodies:
                engine.events.ingest(EventBatch.model_validate_json(raw).events)
            prof.disable()
            profiles.append(cprofile_summary(prof, f"events in-process, validate + ingest (20 batches of {batch})"))
    finally:
        engine.close()
    return row, profiles


# ---------------------------------------------------------------- report

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


def results_table(rows: list[Result], floor: Result) -> str:
    head = ("| Measure | Conns | Requests | Req/s | Events/s | p50 ms | p99 ms | Errors | Req/s ÷ floor "
            "| p50 ÷ floor | p99 ÷ floor | Server CPU | Client CPU | Other load |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        lines.append(
            f"| {r.name} | {r.conns} | {r.requests:,} | {fmt(r.rps)} | {fmt(r.events_per_s) if r.batch else ''} "
            f"| {fmt(r.p50_ms, 2)} | {fmt(r.p99_ms, 2)} | {r.errors} | {ratio(r.rps, floor.rps)} "
            f"| {ratio(r.p50_ms, floor.p50_ms)} | {ratio(r.p99_ms, floor.p99_ms)} "
            f"| {fmt(100 * r.server_cpu, 0) + '%' if r.server_cpu == r.server_cpu else '-'} "
            f"| {fmt(100 * r.client_cpu, 0) + '%' if r.client_cpu == r.client_cpu else '-'} "
            f"| {fmt(100 * r.other_cpu, 0) + '%' if r.other_cpu == r.other_cpu else '-'} |")
    return head + "\n".join(lines) + "\n"


def profile_md(p: Profile) -> str:
    unit = "samples" if p.source == "py-spy" else "calls"
    out = [f"#### {p.title}\n\n{p.source}, {p.samples:,} {unit}. "]
    if p.source == "py-spy":
        out.append("Self time by function (time in C code — SQLite, numpy, pydantic-core, orjson — counts for "
                   "the Python function that called it):\n\n")
    else:
        out.append("Own time (tottime) by function (cProfile's per-call overhead inflates small functions):\n\n")
    out.append("| Function | Share |\n|---|---:|\n" + "".join(f"| `{k}` | {v:.1%} |\n" for k, v in p.self_fn))
    if p.by_module:
        out.append("\nSelf time by ForYou file or other package:\n\n")
        out.append("| Module | Share |\n|---|---:|\n" + "".join(f"| `{k}` | {v:.1%} |\n" for k, v in p.by_module))
    if p.incl_fn:
        out.append("\nInclusive time, ForYou functions (share of time with the function on the stack):\n\n")
        out.append("| Function | Share |\n|---|---:|\n" + "".join(f"| `{k}` | {v:.1%} |\n" for k, v in p.incl_fn))
    if p.self_line:
        out.append("\nHottest lines (self):\n\n")
        out.append("| Line | Share |\n|---|---:|\n" + "".join(f"| `{k}` | {v:.1%} |\n" for k, v in p.self_line[:8]))
    return "".join(out) + "\n"


def machine() -> dict[str, str]:
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


def section(a: argparse.Namespace, m: dict[str, str], rows: list[Result], floor: Result, ceiling: Result,
            load: dict[str, Any] | None, opened: dict[str, Any], serve: dict[str, Any], mixed_ingest: dict[str, Any],
            profiles: list[Profile], client: str, notes: list[str], command: str) -> str:
    key = scale_key(a)
    md = [f"<!-- scale {key} -->\n",
          f"## {a.items:,} items, {a.users:,} users, {a.events:,} events\n\n",
          f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n",
          f"- Command: `{command}`\n",
          f"- Machine: {m['cpu']}, {m['memory']}, {m['os']}; Python {m['python']}\n",
          f"- Libraries: {m['libs']}\n",
          f"- Code: commit {m['commit']}\n",
          f"- Load generator: {client_desc(client, m)}; {a.duration:.0f} s per measurement after "
          f"{a.warmup:.0f} s of warm-up\n\n",
          "### Latency and throughput\n\n",
          results_table(rows, floor), "\n",
          "Req/s and events/s count successful requests per second of the run; latency is per request (per "
          "batch for the events rows), closed loop, so at 16 connections it includes queueing in the "
          "single-threaded server. Server CPU: the server process's CPU (the harness's own for in-process "
          "rows), in % of one core; Client CPU: the load generator's; Other load: every other process on the "
          "machine during the run (each measurement first waits for it to be quiet, but cannot prevent "
          "later activity). In-process rows are one call at a time; their ratios to the floor compare engine "
          "time with the framework's cost.\n\n",
          f"The load generator's own ceiling: {fmt(ceiling.rps)} req/s (p50 {fmt(ceiling.p50_ms, 2)} ms) against a "
          f"raw uvloop socket server that answers a fixed response, i.e. {ceiling.rps / floor.rps:.1f}× the floor; "
          f"during the floor run the client used {fmt(100 * floor.client_cpu, 0)}% of a core and the server "
          f"{fmt(100 * floor.server_cpu, 0)}%, so the floor measures the server, not the client.\n\n"]
    if mixed_ingest:
        md.append(f"Mixed run: while the \"mixed\" row was measured, a second client "
                  f"(benchmarks/ingester.py, {mixed_ingest.get('connections', 4)} connections, open loop) posted "
                  f"batches of {a.batch} at a target of {mixed_ingest['target_events_per_s']:,.0f} events/s and "
                  f"achieved {mixed_ingest['events_per_s']:,.0f} events/s, batch latency p50 "
                  f"{fmt(mixed_ingest['p50_ms'], 1)} ms, p99 {fmt(mixed_ingest['p99_ms'], 1)} ms, "
                  f"{mixed_ingest['n_failures']} failures.\n\n")
    md.append("### Bulk load, start-up, memory\n\n| Measure | Value |\n|---|---:|\n")
    if load:
        for what in ("items", "events"):
            d = load[what]
            md.append(f"| `foryou load --{what}`: {d['rows']:,} rows | {d['seconds']:.1f} s = "
                      f"**{d['per_s']:,.0f} {what}/s**, peak RSS {d['peak_rss_mb']:,.0f} MiB, CPU "
                      f"{d['cpu']:.0%} (other load {d['other_cpu']:.0%}) |\n")
    else:
        md.append("| bulk load | skipped (--skip-load: data directory reused) |\n")
    md.append(f"| `Engine.open` on the loaded data dir (fresh process) | {opened['open_s']:.2f} s "
              f"(+ {opened['import_s']:.2f} s imports), RSS {opened['rss_mb']:,.0f} MiB |\n")
    md.append(f"| `foryou serve`: spawn until /healthz answers 200 | {serve['ready_s']:.2f} s "
              f"(Engine.open inside: {serve.get('open_s', '?')} s) |\n")
    md.append(f"| Server RSS after start-up | {serve['rss_start']:,.0f} MiB |\n")
    md.append(f"| Server RSS after the feed run | {serve['rss_feed']:,.0f} MiB |\n")
    md.append(f"| Server RSS after ingest + mixed runs (end) | {serve['rss_end']:,.0f} MiB "
              f"(peak {serve['hwm_end']:,.0f} MiB) |\n")
    md.append(f"| Graceful shutdown (SIGINT, final checkpoint) | {serve['stop_s']:.2f} s |\n\n")
    if notes:
        md.append("Notes: " + " ".join(notes) + "\n\n")
    if profiles:
        md.append("### Where the time goes\n\n")
        order = ("feed over HTTP", "feed, in-process", "POST", "events in-process", "bulk", "start-up")
        md.extend(profile_md(p) for p in sorted(
            profiles, key=lambda p: next((i for i, o in enumerate(order) if p.title.startswith(o)), 9)))
    md.append(f"<!-- /scale {key} -->\n")
    return "".join(md)


def client_desc(client: str, m: dict[str, str]) -> str:
    if client == "wrk":
        return (f"`{m['wrk']}` (Debian), one thread, a Lua script (benchmarks/wrk.lua) choosing a random user "
                "per feed request and building fresh events (unique ids) for each POST")
    return "a uvloop raw-socket closed-loop client in the harness process (wrk was not installed)"


PREAMBLE = """# Benchmarks

Measured by `benchmarks/run.py` (`make bench` runs the default scale). One run measures, side by side:

- **(a) the floor**: a trivial FastAPI route (`benchmarks/floor_app.py`: one route returning a small JSON,
  no middleware), served by uvicorn with the options `foryou serve` uses (uvloop + httptools, access log off).
  Every HTTP number is also given as a ratio to it: the floor is the most this framework does on this machine.
- **`GET /healthz`** of the ForYou server: the framework plus ForYou's middleware, without engine work.
- **(b) `GET /v1/users/{id}/feed?n=10`** over HTTP at 16 concurrent connections, a random user per request.
- **(c) `engine.feeds.feed(user, 10)` in-process**, one call at a time, same user distribution.
- **(d) `POST /v1/events`** in batches of 1,000 fresh events (unique idempotency ids, random users and items).
- **(e) the same batches in-process** (`EventBatch.model_validate_json` + `engine.events.ingest`), to separate
  HTTP from engine cost.
- **mixed**: (b) again while a second client posts 10,000 events/s (`benchmarks/ingester.py`).
- **bulk load** (`foryou load`, items then events, each in a fresh process), **start-up** (`Engine.open` on the
  loaded directory in a fresh process; `foryou serve` from spawn until `/healthz` answers), **resident memory**
  of the server (after start-up, after the feed run, at the end) and the loaders' peak RSS.
- **where the time goes**: py-spy (`--nonblocking`) attached to the server during separate feed and ingest
  runs (200 Hz, after the timed runs), to the whole bulk load of the events (50 Hz) and to a second
  `Engine.open`; cProfile of the in-process feed and ingest. C code (SQLite, numpy, pydantic-core, orjson) shows
  as self time of the Python function that called it.

The machine is shared and has 2 vCPUs: the server takes one core and wrk part of the other, so anything else
running disturbs the numbers. Each measurement first waits (up to 30 s) for the machine to be quiet, the
harness runs at nice -10, and every row reports the CPU other processes used meanwhile ("Other load"): treat
rows with a high other load as pessimistic. `--rev REV` benchmarks `foryou/` as committed at REV (used below
while the working tree was being edited); each section names the commit it measured.

Data: `benchmarks/gen.py` writes a synthetic catalogue (creators, sounds, 1-3 tags of 300 topics, log-normal
durations, 1% uploaded in the last day, 2% mature) and interaction stream (users with 3 favourite topics, half
their events on those; watch time depends on interest; likes/shares/comments/follows mostly on interesting
items, "not interested" on the others; ids and timestamps over the last 7 days) as JSON Lines under
`benchmarks/out/` (ignored by git), loaded with `foryou load`. Feeds go to users `u0..u{users-1}`, whose
state is loaded on demand (at most `store.user_cache` users are kept in memory).

Reproduce (from the repository root, after `make test` or `pip install -e '.[dev]'`, and
`apt-get install -y wrk`; `pip install py-spy` into `.venv` for the profiles):

```
.venv/bin/python benchmarks/run.py --quick                    # 20k items, 10k users, 200k events
.venv/bin/python benchmarks/run.py                            # 100k items, 100k users, 5M events (make bench)
.venv/bin/python benchmarks/run.py --items 1000000            # 1M items, 100k users, 5M events
```

Each run replaces its own section below (keyed by scale) and leaves the others, and names the commit it
measured; the text above the first section is kept as it is (delete it to have it written afresh).

Targets (issue 2, at 1M items on this 2-core machine): feed p99 <= 10 ms in-process and <= 25 ms over HTTP at
16 connections; ingestion >= 50,000 events/s over HTTP and >= 200,000 events/s through the bulk loader;
resident memory <= 2 GB; start-up in seconds.

"""


def scale_key(a: argparse.Namespace) -> str:
    return f"items={a.items} users={a.users} events={a.events}"


def replace_section(begin: str, end: str, block: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the text between those
    markers in docs/benchmarks.md, or at its end the first time (policy.py and auth.py write theirs so)."""
    doc = DOC.read_text(encoding="utf-8")
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    DOC.write_text(doc, encoding="utf-8")


def update_doc(new_section: str, key: str) -> None:
    sections: dict[str, str] = {}
    preamble, tail = PREAMBLE, ""
    if DOC.exists():
        text = DOC.read_text()
        first = text.find("<!-- scale ")
        if first > 0:  # keep the text above the sections (it may have been edited by hand)
            preamble = text[:first]
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
        tail = text[pos:] if sections else ""  # what follows the scales (the policy section) is kept
    sections[key] = new_section

    def order(k: str) -> tuple[int, ...]:
        return tuple(int(part.split("=")[1]) for part in k.split())

    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(preamble + "\n".join(sections[k] for k in sorted(sections, key=order)) + tail)


def targets_md(feed_http: Result, feed_ip: Result, events_http: Result, load: dict[str, Any] | None,
               serve: dict[str, Any], opened: dict[str, Any], items: int) -> str:
    def row(name: str, target: str, got: str, ok: bool) -> str:
        return f"| {name} | {target} | {got} | {'met' if ok else '**not met**'} |\n"

    rss = max(serve["hwm_end"], serve["rss_end"])
    out = [f"### Against the targets (set for 1M items; this run has {items:,})\n\n",
           "| Target | Wanted | Measured | |\n|---|---|---:|---|\n",
           row("feed p99 in-process", "<= 10 ms", f"{feed_ip.p99_ms:.2f} ms", feed_ip.p99_ms <= 10),
           row("feed p99 over HTTP, 16 conns", "<= 25 ms", f"{feed_http.p99_ms:.2f} ms", feed_http.p99_ms <= 25),
           row("ingest over HTTP", ">= 50,000 events/s", f"{events_http.events_per_s:,.0f} events/s",
               events_http.events_per_s >= 50_000)]
    if load:
        out.append(row("bulk loader", ">= 200,000 events/s", f"{load['events']['per_s']:,.0f} events/s",
                       load["events"]["per_s"] >= 200_000))
    out.append(row("server resident memory", "<= 2 GB", f"{rss:,.0f} MiB peak", rss * 1.048576 <= 2000))
    out.append(row("start-up", "seconds", f"{opened['open_s']:.1f} s Engine.open, {serve['ready_s']:.1f} s serve",
                   serve["ready_s"] < 60))
    return "".join(out) + "\n"


# ---------------------------------------------------------------- main

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
    CODE.dir, CODE.desc = target, f"{sha} (`--rev {rev}`: the committed tree, not the working copy)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--quick", action="store_true", help="20k items, 10k users, 200k events, short runs")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 15; --quick 5)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before the feed runs (default 3; --quick 1)")
    p.add_argument("--conns", type=int, default=16, help="connections for the GET rows")
    p.add_argument("--ingest-conns", type=int, default=2, help="connections for POST /v1/events")
    p.add_argument("--batch", type=int, default=1000, help="events per POST")
    p.add_argument("--mixed-rate", type=float, default=10_000, help="events/s ingested during the mixed run")
    p.add_argument("--max-feeds", type=int, default=5000, help="bound on in-process feed calls")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-profile", action="store_true", help="skip py-spy and cProfile")
    p.add_argument("--profile-seconds", type=float, help="seconds of py-spy per profile (default 10; --quick 5)")
    p.add_argument("--skip-load", action="store_true", help="reuse an already loaded data directory")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--user-cache", type=int,
                   help="set store.user_cache (FORYOU_STORE_USER_CACHE) for every process (default: the server's)")
    p.add_argument("--load-timeout", type=float, default=3600.0, help="kill a bulk load that runs longer")
    p.add_argument("--rev", help="benchmark foryou/ as committed at this git revision (default: the working tree)")
    p.add_argument("--nice", type=int, default=-10,
                   help="niceness for the harness and everything it starts (inherited), so that other work on the "
                        "machine disturbs the measurements less; negative values need root (ignored otherwise)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each measurement wait up to this many seconds for other processes to go idle")
    a = p.parse_args(argv)
    if a.quick:
        explicit = set(argv if argv is not None else sys.argv[1:])
        if "--items" not in explicit:
            a.items = 20_000
        if "--users" not in explicit:
            a.users = 10_000
        if "--events" not in explicit:
            a.events = 200_000
    a.duration = a.duration or (5.0 if a.quick else 15.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 3.0)
    a.profile_seconds = a.profile_seconds or (5.0 if a.quick else 10.0)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    command = "python benchmarks/run.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    client_kind = a.client if a.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if client_kind == "wrk" and not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk, or use --client python", file=sys.stderr)
        return 2
    client = Client(client_kind)
    QUIET["limit_s"] = a.quiet_wait
    if a.nice:
        try:
            os.nice(a.nice - os.nice(0))
        except OSError:
            log(f"cannot set niceness {a.nice} (not root?): running at {os.nice(0)}")
    profile = not a.no_profile
    if profile and not pyspy_available():
        log("py-spy not found (pip install py-spy into the venv): server and loader profiles are skipped")
    OUT.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if a.rev:
        use_revision(a.rev)
    others = sorted(k for k in os.environ if k.startswith("FORYOU_"))
    if others:
        notes.append(f"FORYOU_* variables set in the environment: {', '.join(others)}.")
    if a.user_cache:
        os.environ["FORYOU_STORE_USER_CACHE"] = str(a.user_cache)
        notes.append(f"Run with store.user_cache = {a.user_cache:,} (FORYOU_STORE_USER_CACHE) in every process.")
    key = f"{a.items}i-{a.users}u-{a.events}e-s{a.seed}"
    src, data = OUT / f"gen-{key}", OUT / f"data-{key}"
    m = machine()

    log(f"data: {a.items:,} items, {a.users:,} users, {a.events:,} events -> {src}")
    t = time.perf_counter()
    items_path, events_path = generate(src, a.items, a.users, a.events, seed=a.seed)
    log(f"  generated (or reused) in {time.perf_counter() - t:.1f}s")

    load = None
    if a.skip_load and (data / "LOADED").exists():
        notes.append("The data directory was reused from an earlier run (--skip-load): it also holds that "
                     "run's served items and ingested events.")
    else:
        load = run_load(data, items_path, events_path, profile, a.load_timeout)
        (data / "LOADED").write_text("ok\n")

    log("Engine.open in a fresh process")
    opened = run_open(data)
    log(f"  {opened['open_s']:.2f}s, RSS {opened['rss_mb']:.0f} MiB, {opened['items']:,} items")

    profiles: list[Profile] = []
    if profile and pyspy_available():
        open_prof = profile_open(data)
        if open_prof:
            profiles.append(open_prof)
    # (c) first, so that it and (b) see the same state (the ingest runs below change users' interests)
    log("in-process feed")
    feed_ip, got = inprocess_feed(data, a.users, a.duration, a.warmup, a.max_feeds, profile)
    profiles.extend(got)
    log(f"  p50 {feed_ip.p50_ms:.2f} ms, p99 {feed_ip.p99_ms:.2f} ms ({feed_ip.requests:,} feeds)")

    log("API key: foryou keys create --scopes admin")
    api_key = make_key(data)
    if api_key:
        notes.append("Every request to the ForYou server but /healthz carries `Authorization: Bearer` with an admin "
                     "key made by `foryou keys create` (looked up in keys.db and hashed on each request).")

    def spy(srv: Server, title: str, mode: tuple[Any, ...], conns: int, fname: str) -> None:
        if not (profile and pyspy_available()):
            return
        path = OUT / f"profile-{fname}.txt"
        proc = start_pyspy(srv.pid, a.profile_seconds, path)
        client.run("profiled", srv.port, mode, conns, a.profile_seconds + 1, key=api_key)
        proc.wait(timeout=a.profile_seconds + 60)
        got = parse_pyspy(path, title)
        if got:
            profiles.append(got)

    with contextlib.ExitStack() as stack:
        # the client's ceiling and the floor
        port = free_port()
        ceiling_srv = Server("ceiling", [PY, str(BENCH / "ceiling_server.py"), str(port)], port, "/")
        stack.callback(ceiling_srv.stop)
        ceiling = client.run("client ceiling (raw uvloop server)", port, ("get", "/"), a.conns,
                             max(3.0, a.duration / 2), ceiling_srv.pid)
        ceiling_srv.stop()
        log(f"ceiling: {ceiling.rps:,.0f} req/s")

        def measure_floor() -> Result:
            port = free_port()
            floor_srv = Server("floor", uvicorn_floor(port), port, "/ping")
            stack.callback(floor_srv.stop)
            client.run("warm-up", port, ("get", "/ping"), a.conns, a.warmup)
            got = client.run("(a) floor: FastAPI trivial route", port, ("get", "/ping"), a.conns, a.duration,
                             floor_srv.pid)
            floor_srv.stop()
            log(f"floor: {got.rps:,.0f} req/s, p50 {got.p50_ms:.2f} ms, p99 {got.p99_ms:.2f} ms")
            return got

        floors = [measure_floor()]  # measured again after the ForYou server: the better run is the floor

        # the ForYou server
        port = free_port()
        log("foryou serve: starting")
        srv = Server("foryou-serve", serve_cmd(data, port), port, "/healthz", cwd=CODE.dir)
        stack.callback(srv.stop)
        serve: dict[str, Any] = {"ready_s": srv.ready_s}
        serve["rss_start"], _ = rss_mb(srv.pid)
        for line in srv.log_path.read_text().splitlines():
            if " in " in line and "items loaded" in line:
                serve["open_s"] = line.rsplit(" in ", 1)[1].split("s;")[0]
        log(f"  ready in {srv.ready_s:.2f}s, RSS {serve['rss_start']:.0f} MiB")
        notes.append("Sanity check before timing: " + sanity(srv.port, a.users, a.items, api_key) + ".")

        healthz = client.run("GET /healthz (ForYou app, no engine work)", port, ("get", "/healthz"), a.conns,
                             a.duration, srv.pid)
        log(f"healthz: {healthz.rps:,.0f} req/s")
        feed_mode = ("feed", a.users, 10)
        client.run("warm-up", port, feed_mode, a.conns, a.warmup, key=api_key)
        feed_http = client.run(f"(b) feed over HTTP, n=10, {a.conns} conns", port, feed_mode, a.conns,
                               a.duration, srv.pid, key=api_key)
        serve["rss_feed"], _ = rss_mb(srv.pid)
        log(f"feed/http: {feed_http.rps:,.0f} req/s, p50 {feed_http.p50_ms:.2f} ms, p99 {feed_http.p99_ms:.2f} ms")
        spy(srv, f"feed over HTTP ({a.conns} conns), server process", feed_mode, a.conns, "feed")

        events_mode = ("events", a.users, a.items, a.batch)
        events_http = client.run(f"(d) POST /v1/events, {a.batch}/batch, {a.ingest_conns} conns", port,
                                 events_mode, a.ingest_conns, a.duration, srv.pid, key=api_key)
        log(f"events/http: {events_http.events_per_s:,.0f} events/s, p50 {events_http.p50_ms:.1f} ms")
        spy(srv, f"POST /v1/events over HTTP ({a.batch}/batch), server process", events_mode, a.ingest_conns,
            "events")

        # mixed: feeds while another client ingests at a fixed rate
        ingest_s = a.duration + a.warmup + 2
        ing = subprocess.Popen([PY, str(BENCH / "ingester.py"), "--port", str(port), "--rate", str(a.mixed_rate),
                                "--batch", str(a.batch), "--seconds", str(ingest_s), "--users", str(a.users),
                                "--items", str(a.items), "--connections", "4",
                                *(["--key", api_key] if api_key else [])],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0 + a.warmup)
        mixed = client.run(f"mixed: (b) while another client posts {a.mixed_rate:,.0f} events/s", port, feed_mode,
                           a.conns, a.duration, srv.pid, key=api_key)
        out, _ = ing.communicate(timeout=ingest_s + 120)
        mixed_ingest: dict[str, Any] = {}
        for line in out.splitlines():
            if line.startswith("INGESTJSON "):
                mixed_ingest = orjson.loads(line[11:])
                mixed_ingest["connections"] = 4
        log(f"mixed: feed p99 {mixed.p99_ms:.1f} ms; ingest {mixed_ingest.get('events_per_s', 0):,.0f} events/s")
        serve["rss_end"], serve["hwm_end"] = rss_mb(srv.pid)
        serve["stop_s"] = srv.stop()
        floors.append(measure_floor())
        floor = max(floors, key=lambda r: r.rps)
        notes.append("The floor was measured before and after the ForYou server: "
                     + " and ".join(f"{r.rps:,.0f} req/s (p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms)"
                                    for r in floors) + "; the better run is the floor.")

    if load and profile and pyspy_available():
        bulk_prof = parse_pyspy(OUT / "profile-bulk.txt", "bulk load (`foryou load --events`), the whole run")
        if bulk_prof:
            profiles.append(bulk_prof)

    log("in-process ingest")
    ingest_ip, got = inprocess_ingest(data, a.users, a.items, a.duration, a.warmup, a.batch, profile)
    profiles.extend(got)
    log(f"  {ingest_ip.events_per_s:,.0f} events/s, p50 {ingest_ip.p50_ms:.1f} ms")

    rows = [floor, healthz, feed_http, feed_ip, events_http, ingest_ip, mixed]
    for r in rows:
        if r.errors:
            notes.append(f"{r.name}: {r.errors} failed requests (non-200 or socket errors).")
    if mixed_ingest.get("n_failures"):
        notes.append(f"mixed-run ingester failures: {mixed_ingest['failures']}.")
    sec = section(a, m, rows, floor, ceiling, load, opened, serve, mixed_ingest, profiles, client_kind, notes,
                  command)
    targets = targets_md(feed_http, feed_ip, events_http, load, serve, opened, a.items)
    sec = sec.replace("### Bulk load, start-up, memory", targets + "### Bulk load, start-up, memory", 1)
    print(sec)
    if not a.no_doc:
        update_doc(sec, scale_key(a))
        log(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
