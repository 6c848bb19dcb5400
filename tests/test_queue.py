"""The per-process enqueuer: coalescing ids from many requests into few scoring tasks, and what a failed send does.

The real broker path (Redis, the filesystem transport, a broker outage) is covered end to end in
test_api.py and test_pipeline.py; here the sender is a plain function so the timing logic can be checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from service.api.auth_key import KeyCache
from service.queue import Enqueuer, coalescing_window


class Recorder:
    """A send function that records each task's ids (and can be told to fail)."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.sent: list[list[int]] = []
        self.unsent: list[list[int]] = []
        self.fail = fail
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def send(self, ids: list[int]) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("broker down")
        with self.lock:
            self.sent.append(list(ids))

    def mark_unsent(self, ids: list[int]) -> None:
        self.unsent.append(list(ids))


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def make(rec: Recorder, chunk: int = 256, linger_s: float = 0.2) -> Enqueuer:
    return Enqueuer(send=rec.send, mark_unsent=rec.mark_unsent, chunk_size=chunk, linger_s=linger_s)


def test_a_lone_id_after_a_quiet_spell_is_sent_at_once():
    rec = Recorder()
    q = make(rec, linger_s=10.0)
    started = time.monotonic()
    q.submit([1])
    wait_until(lambda: rec.sent == [[1]])
    assert time.monotonic() - started < 3.0  # not held for the 10 s linger


def test_ids_arriving_within_the_linger_share_one_task():
    rec = Recorder()
    q = make(rec, linger_s=1.0)
    q.submit([1])
    wait_until(lambda: rec.sent == [[1]])
    for i in range(2, 12):
        q.submit([i])
        time.sleep(0.005)
    wait_until(lambda: sum(map(len, rec.sent)) == 11)
    assert rec.sent == [[1], list(range(2, 12))]
    assert q.tasks_sent == 2 and q.pending == 0


def test_a_full_chunk_does_not_wait_for_the_linger():
    rec = Recorder()
    q = make(rec, chunk=4, linger_s=5.0)
    q.submit([1])
    wait_until(lambda: rec.sent == [[1]])
    q.submit([2, 3, 4, 5, 6, 7, 8, 9, 10])
    wait_until(lambda: sum(map(len, rec.sent)) == 10, timeout_s=2.0)
    assert rec.sent == [[1], [2, 3, 4, 5], [6, 7, 8, 9], [10]]


def test_flush_sends_everything_pending_and_waits_for_a_send_under_way():
    rec = Recorder(delay_s=0.2)
    q = make(rec, linger_s=5.0)
    q.submit([1])  # the sender thread takes it and sleeps in send()
    time.sleep(0.05)
    q.submit([2, 3])  # waits for the linger
    q.flush()
    assert sorted(i for task in rec.sent for i in task) == [1, 2, 3]
    assert q.pending == 0


def test_a_failed_send_marks_the_rest_unsent_and_keeps_going():
    rec = Recorder(fail=True)
    q = make(rec, chunk=2, linger_s=0.05)
    q.submit([1, 2, 3])
    wait_until(lambda: rec.unsent)
    assert rec.unsent == [[1, 2, 3]] and rec.sent == []
    rec.fail = False
    q.submit([4])
    wait_until(lambda: rec.sent == [[4]])


def test_no_linger_sends_in_the_callers_thread():
    rec = Recorder()
    q = make(rec, chunk=2, linger_s=0)
    q.submit([1, 2, 3])
    assert rec.sent == [[1, 2], [3]]  # already sent when submit returns


def test_the_idle_sender_thread_exits_and_a_new_one_starts(monkeypatch):
    from service import queue

    monkeypatch.setattr(queue, "IDLE_EXIT_S", 0.1)
    rec = Recorder()
    q = make(rec, linger_s=0.01)
    q.submit([1])
    wait_until(lambda: rec.sent == [[1]])
    wait_until(lambda: q._thread is None)
    q.submit([2])
    wait_until(lambda: rec.sent == [[1], [2]])


def test_the_window_grows_with_the_ids_waiting_up_to_the_linger():
    assert coalescing_window(1, 256, 0.25) == pytest.approx(0.25 / 16)
    assert coalescing_window(64, 256, 0.25) == pytest.approx(0.125)
    assert coalescing_window(256, 256, 0.25) == coalescing_window(1000, 256, 0.25) == pytest.approx(0.25)


def test_single_ids_at_a_modest_rate_are_not_held_for_the_linger():
    submitted: dict[int, float] = {}
    delays: list[float] = []
    rec = Recorder()

    def send(ids: list[int]) -> None:
        delays.extend(time.monotonic() - submitted[i] for i in ids)
        rec.send(ids)

    q = Enqueuer(send=send, mark_unsent=rec.mark_unsent, chunk_size=256, linger_s=0.25)
    for i in range(40):  # 100 ids/s, one per request
        submitted[i] = time.monotonic()
        q.submit([i])
        time.sleep(0.01)
    wait_until(lambda: len(delays) == 40)
    # A fixed 250 ms linger held most of them for up to 250 ms in 2-3 tasks; the window now stays near
    # linger**2 * rate / chunk (about 25 ms here), and they still share tasks.
    assert max(delays) < 0.15
    assert 4 <= len(rec.sent) < 40


def test_ids_gather_for_the_whole_linger_while_the_workers_are_behind():
    rec = Recorder()
    backlog = [0]
    q = Enqueuer(send=rec.send, mark_unsent=rec.mark_unsent, chunk_size=256, linger_s=0.3,
                 backlog=lambda: backlog[0])
    q.submit([0])
    wait_until(lambda: rec.sent == [[0]])  # read 0 before this send: the workers keep up
    backlog[0] = 3
    q.submit([1])
    wait_until(lambda: len(rec.sent) == 2)  # sent within the short window; read 3 before it
    started = time.monotonic()
    for i in range(2, 22):  # 100 ids/s
        q.submit([i])
        time.sleep(0.01)
    wait_until(lambda: sum(map(len, rec.sent)) == 22)
    # Behind: one task per linger (about 0.2 s of ids, so one or two tasks), not one every few ms.
    assert len(rec.sent) <= 4
    assert time.monotonic() - started >= 0.25


def test_an_unreadable_backlog_counts_as_none():
    def broken() -> int:
        raise ConnectionError("redis down")

    rec = Recorder()
    q = Enqueuer(send=rec.send, mark_unsent=rec.mark_unsent, chunk_size=256, linger_s=10.0, backlog=broken)
    q.submit([1])
    wait_until(lambda: rec.sent == [[1]])
    q.submit([2])
    wait_until(lambda: rec.sent == [[1], [2]], timeout_s=2.0)  # a lone id: the short window, not 10 s


# --------------------------------------------------------------------------- API-key cache


def test_key_cache_remembers_valid_keys_for_the_ttl_only():
    cache = KeyCache(ttl_s=0.2)
    cache.put("h1", "client-a")
    assert cache.get("h1") == "client-a" and cache.get("h2") is None
    time.sleep(0.25)
    assert cache.get("h1") is None


def test_key_cache_with_ttl_zero_never_caches():
    cache = KeyCache(ttl_s=0)
    cache.put("h1", "client-a")
    assert cache.get("h1") is None


def test_key_cache_forget_drops_everything():
    cache = KeyCache(ttl_s=60)
    cache.put("h1", "a")
    cache.put("h2", "b")
    cache.forget()
    assert cache.get("h1") is None and cache.get("h2") is None


_PRIORITY_PROBE = (
    "import os; from worker.lifecycle import autogroup_nice, lower_priority; lower_priority(7); "
    "print(os.nice(0)); print(autogroup_nice())"
)


@pytest.mark.parametrize("own_session", [True, False])
def test_the_worker_lowers_its_priority_and_its_own_sessions_group_only(own_session, tmp_path):
    env = {**os.environ, "SKETCHWATCH_ENV": "testing", "SKETCHWATCH_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _PRIORITY_PROBE], env=env, capture_output=True, text=True, timeout=120,
        start_new_session=own_session, check=True,
    ).stdout.split()  # fmt: skip
    assert out[0] == str(os.nice(0) + 7)
    from worker.lifecycle import autogroup_nice

    if out[1] != "None":  # kernels or cgroups without autogroup scheduling have no group to lower
        # A session leader lowers its own group; anyone else leaves the shared group (pytest's here) alone.
        assert out[1] == ("7" if own_session else str(autogroup_nice()))


@pytest.mark.parametrize(("content", "expected"), [("/autogroup-85 nice 3\n", 3), ("", None)])
def test_autogroup_nice_reads_the_group_or_none_outside_autogroup_scheduling(content, expected, tmp_path, monkeypatch):
    from worker import lifecycle as tasks

    path = tmp_path / "autogroup"
    path.write_text(content)  # a task in a non-root cgroup reads an empty file
    monkeypatch.setattr(tasks, "AUTOGROUP_FILE", str(path))
    assert tasks.autogroup_nice() == expected
    monkeypatch.setattr(tasks, "AUTOGROUP_FILE", str(tmp_path / "missing"))
    assert tasks.autogroup_nice() is None
