"""Process supervision for ``sketchwatch up``: start children, stop them all together, leave no orphans.

Each child runs in its own session (process group), so a terminal's Ctrl-C reaches only the
supervisor, which then stops every child together: SIGTERM to the child (granian and Celery shut
down gracefully), SIGKILL to its whole group after a grace period. On Linux a child also gets SIGTERM
if the supervisor itself dies (``PR_SET_PDEATHSIG``). Starting, waiting and stopping are the stack
harness's (``service.stack``); this module adds the foreground loop and the signal handling.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from service.stack import spawn, stop_processes, wait_http

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised process."""

    name: str
    proc: subprocess.Popen

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None


class Supervisor:
    """Start named child processes, wait for a stop signal or a child's death, then stop them all."""

    def __init__(self, grace_s: float = 30.0, poll_s: float = 0.2) -> None:
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.children: list[Child] = []
        self._signal: int | None = None

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """Start ``argv`` in a new session; stdout and stderr are inherited."""
        child = Child(name, spawn(argv, env, die_with_parent=True))
        self.children.append(child)
        log.info("started %s (pid %d)", name, child.proc.pid)
        return child

    def install_signal_handlers(self) -> None:
        """Turn SIGINT and SIGTERM into a stop request instead of an exception."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        """Signal handler: remember the request; the loop in ``run`` acts on it."""
        self._signal = signum

    @property
    def stop_requested(self) -> bool:
        """True after SIGINT or SIGTERM."""
        return self._signal is not None

    def dead_child(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if not c.alive), None)

    def wait_http(self, url: str, timeout_s: float) -> bool:
        """Poll ``url`` until it answers 200; False on timeout, stop request or a dead child."""

        def keep_waiting() -> bool:
            return not self.stop_requested and self.dead_child() is None

        return wait_http(url, timeout_s, keep_waiting, self.poll_s)[0]

    def run(self) -> int:
        """Block until a stop signal (exit 0) or a child's death (exit 1), then stop every child."""
        try:
            while not self.stop_requested:
                dead = self.dead_child()
                if dead is not None:
                    log.error("%s exited with status %s; stopping everything", dead.name, dead.proc.returncode)
                    print(f"sketchwatch: {dead.name} exited with status {dead.proc.returncode}", file=sys.stderr)
                    return 1
                time.sleep(self.poll_s)
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM every child, wait up to the grace period, then SIGKILL what is left of each group."""
        stop_processes([(c.name, c.proc) for c in self.children], self.grace_s)
