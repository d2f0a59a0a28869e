"""Per-client request limit for the routes under /keys, on the `limits` library (moving window).

Each app has its own `ClientRateLimit` (and by default its own in-memory storage), so two apps in
one process never share counters. A shared storage (`limits.storage.storage_from_string`, e.g.
Redis) can be passed to `create_app` when several API processes must share one budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, MovingWindowSupport, Storage
from limits.strategies import MovingWindowRateLimiter

from keystore.errors import ConfigError

__all__ = ["ClientRateLimit"]


class ClientRateLimit:
    """`hit(client)` takes one request from the client's budget; it returns None when the request
    may go on, else the whole seconds until the window has room again (>= 1).

    `clock` (epoch seconds) must be the clock the storage measures windows with; tests inject a
    storage and clock pair so recovery needs no sleeping."""

    def __init__(
        self,
        rate: str,
        *,
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            self.item: RateLimitItem = parse(rate)
        except ValueError:
            raise ConfigError(
                f"KEYRELAY_API_RATE_LIMIT {rate!r} is not a rate such as '10/minute' or '3/second'"
            ) from None
        self.storage = storage if storage is not None else MemoryStorage()
        if not isinstance(self.storage, MovingWindowSupport):
            raise ConfigError("the rate-limit storage must support the moving-window strategy")
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._clock = clock

    def hit(self, client: str) -> int | None:
        if self._limiter.hit(self.item, client):
            return None
        reset_at, _remaining = self._limiter.get_window_stats(self.item, client)
        return max(1, math.ceil(reset_at - self._clock()))

    def reset(self) -> None:
        """Forget every client's usage."""
        self.storage.reset()
