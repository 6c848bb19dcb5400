"""The leased per-key API budget: shared through Redis, never over the limit, counting locally when Redis fails."""

from __future__ import annotations

import uuid

from service.api_budget import MAX_LEASE, KeyBudget


def test_two_processes_sharing_redis_never_admit_more_than_the_limit(redis_url):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    a = KeyBudget("1000 per minute", redis_url, prefix)
    b = KeyBudget("1000 per minute", redis_url, prefix)
    assert a.lease_size == 10
    admitted = 0
    for i in range(1500):
        admitted += (a if i % 3 else b).take("key:x").allowed
    # Both web processes together: at most the limit, at least the limit minus what their last leases strand.
    assert 1000 - 2 * (a.lease_size - 1) <= admitted <= 1000
    verdict = a.take("key:x")
    assert not verdict.allowed and verdict.remaining == 0 and 1 <= verdict.retry_after() <= 60
    assert b.take("key:other").allowed  # another key has its own budget
    a.reset()


def test_small_limits_are_exact_and_leases_are_capped(redis_url):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    small = KeyBudget("3 per minute", redis_url, prefix)
    assert small.lease_size == 1
    assert [small.take("k").allowed for _ in range(4)] == [True, True, True, False]
    assert KeyBudget("1000000 per minute", redis_url, prefix).lease_size == MAX_LEASE
    small.reset()


def test_remaining_counts_down_across_leases(redis_url):
    budget = KeyBudget("500 per minute", redis_url, f"test-{uuid.uuid4().hex[:8]}")
    seen = [budget.take("k").remaining for _ in range(12)]
    assert seen == list(range(499, 487, -1))
    budget.reset()


def test_an_unreachable_storage_falls_back_to_counting_in_the_process():
    # Nothing listens on port 1: every storage call fails fast.
    budget = KeyBudget("2 per minute", "redis://127.0.0.1:1/0", "t", {"socket_timeout": 0.2, "socket_connect_timeout": 0.2})
    assert [budget.take("k").allowed for _ in range(3)] == [True, True, False]
