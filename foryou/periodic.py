"""Periodic work (learning's joins and checkpoints, the live state's checkpoints, retention) run by
name, so that one task's exception neither stops the others nor itself for good: each failure is
logged (its type and where, not its message, which may quote an id) and counted, and the task is
retried at a later tick, backing off up to a minute. A task that failed `MISSED` times in a row is
`failing`, which `/healthz` reports as degraded until it succeeds again."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("foryou.periodic")

MISSED = 3  # failures in a row before a task counts as failing
MAX_BACKOFF_S = 60.0


def where(exc: BaseException) -> str:
    """The exception's type and the innermost frames, without its message."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return f"{type(exc).__name__} at " + " <- ".join(
        f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


class Periodic:
    def __init__(self, tasks: dict[str, Callable[[float], bool | None]], interval_s: float) -> None:
        self.tasks = tasks
        self.interval_s = interval_s
        self.failures = dict.fromkeys(tasks, 0)  # ever, for /metrics
        self.in_a_row = dict.fromkeys(tasks, 0)
        self.retry_at = dict.fromkeys(tasks, 0.0)

    def add(self, name: str, task: Callable[[float], bool | None]) -> None:
        """One more task (the server adds its garbage collection)."""
        self.tasks[name] = task
        self.failures[name], self.in_a_row[name], self.retry_at[name] = 0, 0, 0.0

    def run(self, now: float, strict: bool = False, only: str | None = None) -> bool:
        """Run every task (or `only` that one) whose retry time has come; `now` in the engine's time.
        `strict` (a step driver, where a failure must surface): raise instead. Returns whether a task
        said it has more to do at once (a checkpoint in slices), to be run again soon."""
        more = False
        for name, task in self.tasks.items():
            if now < self.retry_at[name] or (only is not None and name != only):
                continue
            try:
                more = bool(task(now)) or more
            except Exception as exc:  # any failure: the other tasks and later ticks go on
                if strict:
                    raise
                self.failures[name] += 1
                self.in_a_row[name] += 1
                backoff = min(self.interval_s * 2 ** min(self.in_a_row[name] - 1, 32), MAX_BACKOFF_S)
                self.retry_at[name] = now + backoff
                log.error("periodic task %r failed (%d in a row; retried in %.1fs): %s", name,
                          self.in_a_row[name], backoff, where(exc))
            else:
                self.in_a_row[name] = 0
                self.retry_at[name] = 0.0
        return more

    def failing(self) -> list[str]:
        """Tasks that failed `MISSED` times in a row and have not succeeded since."""
        return [name for name, count in self.in_a_row.items() if count >= MISSED]
