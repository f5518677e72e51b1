"""Where the time goes: py-spy attached to a process (`--nonblocking`, raw stacks) and cProfile in-process,
summarised as shares of the sampled time, and those summaries as Markdown. C code (SQLite, numpy,
pydantic-core, orjson) shows as self time of the Python function that called it.

The summaries go to stdout and to the full reports under benchmarks/out/, not to docs/benchmarks.md.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import CODE, PY, ROOT


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
