"""The serve role's trainer process: started with the server, restarted when it dies, stopped with it.

The child runs `foryou train --parent PID` on the same data directory and settings; it stops by itself
when its parent is gone (so a `kill -9` of the server leaves no orphan training on). A child that
exits is started again after a pause that doubles up to a minute while it keeps failing; the server
counts the restarts (`foryou_trainer_restarts`), and `/healthz` says "degraded" after three quick
exits in a row.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger("foryou.trainer")

_BACKOFF_S = (1.0, 60.0)
_HEALTHY_S = 30.0  # a child that ran this long was healthy: the pause starts again from the shortest


class TrainerProcess:
    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)  # the `foryou train` arguments (data directory, regions, config)
        self.restarts = 0
        self.in_a_row = 0  # exits in a row, each within _HEALTHY_S of its start
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a child is never started once `stop` began
        self._thread = threading.Thread(target=self._supervise, name="foryou-trainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def failing(self) -> bool:
        """Exited three times in a row, each soon after its start (/healthz says so)."""
        return self.in_a_row >= 3

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "foryou.cli", "train", *self.args, "--parent", str(os.getpid())]
        # A session of its own: a Ctrl-C at the terminal reaches the server, which stops the child
        # itself, rather than both (the child would exit first and be counted as a failure).
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)

    def _supervise(self) -> None:
        pause = _BACKOFF_S[0]
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stop.is_set():
                    return
                self.process = process = self._spawn()
            code = process.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            if time.monotonic() - started >= _HEALTHY_S:
                pause = _BACKOFF_S[0]
                self.in_a_row = 0
            self.in_a_row += 1
            log.warning("the trainer process exited (code %s); starting it again in %.0fs", code, pause)
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, _BACKOFF_S[1])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the child to publish what it learned and exit; kill it after `timeout_s`."""
        with self._lock:
            self._stop.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
