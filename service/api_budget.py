"""The per-key API rate limit: a fixed window in shared storage (``limits``), taken in leases.

Flask-Limiter evaluated this limit on every request: it re-parsed the limit string, resolved the limits of
the route and ran one ``EVALSHA`` against Redis, a quarter of a single submission's CPU. Here a web process
takes a lease of ``n`` requests from the shared counter at once (``hit(cost=n)``) and admits locally while it
lasts. The shared counter still never passes the limit; a process can leave at most ``n - 1`` units of its
last lease unused when the window ends. ``n`` is a hundredth of the limit (at most ``MAX_LEASE``), so small
limits (the tests' "3 per minute") are exact, one unit per request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

log = logging.getLogger(__name__)

MAX_LEASE = 50
LEASE_FRACTION = 100
# Leases of keys not seen for this long are dropped (one entry per API key in use).
PRUNE_EVERY_S = 60.0


@dataclass
class _Lease:
    left: int
    expires: float  # epoch seconds: the shared window's reset time
    remaining: int  # units the shared counter had left after this lease was taken


@dataclass
class Verdict:
    """Whether a request may go on, and what to tell the client about the window."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # epoch seconds

    def retry_after(self) -> int:
        """Whole seconds until the window resets (at least 1)."""
        return max(1, math.ceil(self.reset - time.time()))


class KeyBudget:
    """One limit (e.g. "6000 per minute") per API key, counted in ``storage_uri`` and leased per process."""

    def __init__(self, limit: str, storage_uri: str, prefix: str, storage_options: dict | None = None) -> None:
        self.item: RateLimitItem = parse(limit)
        self.prefix = prefix
        # Socket timeouts mean nothing to (and are refused by) the in-process memory storage.
        options = {} if storage_uri.startswith("memory://") else storage_options or {}
        self.storage = storage_from_string(storage_uri, **options)
        self.shared = FixedWindowRateLimiter(self.storage)
        # Storage trouble must not turn every request into a 500: fall back to per-process counting.
        self.fallback = FixedWindowRateLimiter(MemoryStorage())
        self.lease_size = max(1, min(MAX_LEASE, self.item.amount // LEASE_FRACTION))
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._pruned = time.monotonic()

    def take(self, key: str) -> Verdict:
        """Count one request of ``key``."""
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.left > 0 and now < lease.expires:
                lease.left -= 1
                return Verdict(True, self.item.amount, lease.remaining + lease.left, lease.expires)
        try:
            lease = self._acquire(self.shared, key)
        except Exception:  # noqa: BLE001 - any storage failure: count in this process instead
            log.warning("rate-limit storage unavailable; counting in this process", exc_info=True)
            lease = self._acquire(self.fallback, key)
        with self._lock:
            self._prune(now)
            if lease.left == 0:
                self._leases.pop(key, None)
                return Verdict(False, self.item.amount, 0, lease.expires)
            lease.left -= 1
            self._leases[key] = lease
            return Verdict(True, self.item.amount, lease.remaining + lease.left, lease.expires)

    def reset(self) -> None:
        """Forget every count, shared and local (tests)."""
        with self._lock:
            self._leases.clear()
        self.storage.reset()
        self.fallback.storage.reset()

    def _acquire(self, strategy: FixedWindowRateLimiter, key: str) -> _Lease:
        size = self.lease_size
        if size > 1:
            # A failed hit still counts its cost, so ask only for what the window has left.
            size = min(size, strategy.get_window_stats(self.item, self.prefix, key).remaining)
        granted = size if size > 0 and strategy.hit(self.item, self.prefix, key, cost=size) else 0
        stats = strategy.get_window_stats(self.item, self.prefix, key)
        return _Lease(granted, stats.reset_time, stats.remaining)

    def _prune(self, now: float) -> None:
        if time.monotonic() - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = time.monotonic()
        for key in [k for k, lease in self._leases.items() if lease.expires <= now]:
            del self._leases[key]
