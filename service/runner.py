"""Process supervision for ``sketchwatch up``: start children, stop them all together, leave no orphans.

Each child runs in its own session (process group), so a terminal's Ctrl-C reaches only the
supervisor, which then stops every child in order: SIGTERM to the child (granian and Celery shut
down gracefully), SIGKILL to its whole group after a grace period. On Linux a child also gets SIGTERM
if the supervisor itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    """One supervised process."""

    name: str
    proc: subprocess.Popen

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


class Supervisor:
    """Start named child processes, wait for a stop signal or a child's death, then stop them all."""

    def __init__(self, grace_s: float = 30.0, poll_s: float = 0.2) -> None:
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.children: list[Child] = []
        self._signal: int | None = None

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """Start ``argv`` in a new session; stdout and stderr are inherited."""
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the supervisor is single-threaded
        )
        child = Child(name, proc)
        self.children.append(child)
        log.info("started %s (pid %d)", name, proc.pid)
        return child

    def install_signal_handlers(self) -> None:
        """Turn SIGINT and SIGTERM into a stop request instead of an exception."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
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
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop_requested and self.dead_child() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own local URL
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(self.poll_s)
        return False

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
        for child in self.children:
            if child.alive:
                _signal_quietly(child.proc.pid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + self.grace_s
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.name, self.grace_s)
        for child in self.children:
            # The group also holds grandchildren (granian workers and Celery pool processes) a hard kill would orphan.
            _signal_quietly(child.proc.pid, signal.SIGKILL, group=True)
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) could not be reaped", child.name, child.proc.pid)


def _signal_quietly(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
