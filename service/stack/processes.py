"""Child processes in their own process groups: start, wait for, signal and stop them with bounded waits.

Each child runs in a new session, so a terminal's Ctrl-C reaches only its parent, and a whole group
(granian's workers, Celery's pool processes) is killed together when its main process does not stop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
GROUP_GONE_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def free_port(candidates: Iterable[int] = ()) -> int:
    """A TCP port free on 127.0.0.1 right now (the first free one of ``candidates``, else any)."""
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout_s: float, message: str, poll_s: float = 0.1):
    """Poll ``condition`` until it returns something truthy, and return that; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{message} within {timeout_s:.0f} s")


def wait_http(
    url: str, timeout_s: float, keep_waiting: Callable[[], bool] = lambda: True, poll_s: float = 0.2
) -> tuple[bool, str]:
    """Poll ``url`` until it answers 200: (True, ""); (False, the last error) on timeout or once ``keep_waiting`` is False."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline and keep_waiting():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own local URL
                if resp.status == 200:
                    return True, ""
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(poll_s)
    return False, last


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen:
    """Start ``argv`` in a new session (its own process group); output goes to ``log_path``, else is inherited.

    With ``die_with_parent`` the child gets SIGTERM when this process dies (Linux), so a supervisor
    killed hard leaves no orphans.
    """
    kwargs: dict = {"env": dict(env) if env is not None else None, "cwd": cwd, "start_new_session": True}
    if die_with_parent:
        kwargs["preexec_fn"] = _die_with_parent  # the callers are single-threaded when they spawn
    if log_path is None:
        return subprocess.Popen(list(argv), **kwargs)
    with open(log_path, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, **kwargs)


def signal_quietly(pid: int, sig: int, group: bool = False) -> None:
    """Send ``sig`` to a process (or its whole group); a process already gone is not an error."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group_gone(pgid: int, timeout_s: float = GROUP_GONE_TIMEOUT_S) -> None:
    """Wait until no process of group ``pgid`` is left (pool processes die a moment after their parent)."""
    import psutil

    def gone() -> bool:
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    return False
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return True

    try:
        wait_for(gone, timeout_s, f"processes of group {pgid} still alive")
    except TimeoutError:
        signal_quietly(pgid, signal.SIGKILL, group=True)


def stop_processes(named: Sequence[tuple[str, subprocess.Popen]], grace_s: float = STOP_TIMEOUT_S) -> None:
    """Stop processes together: SIGTERM to each main process, one grace period, then SIGKILL to each whole group.

    The main process (granian, Celery) shuts its own children down gracefully; the group kill reaches
    the grandchildren (granian workers, Celery pool processes) a hard stop would otherwise orphan.
    """
    for _name, proc in named:
        if proc.poll() is None:
            signal_quietly(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for name, proc in named:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, grace_s)
    for name, proc in named:
        signal_quietly(proc.pid, signal.SIGKILL, group=True)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) could not be reaped", name, proc.pid)
        wait_group_gone(proc.pid)


def kill_group(proc: subprocess.Popen, sig: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Send ``sig`` to the process's whole group and reap it; SIGKILL to the group if it outlives ``timeout_s``."""
    signal_quietly(proc.pid, sig, group=True)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_quietly(proc.pid, signal.SIGKILL, group=True)
        proc.wait(timeout=10)
        sig = signal.SIGKILL
    if sig == signal.SIGKILL:
        wait_group_gone(proc.pid)
