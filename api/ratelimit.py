"""Per-client request budgets on the `limits` library (moving window).

What a client is: the address in the ASGI scope (`client_address`): the TCP peer, unless uvicorn
rewrote it from `X-Forwarded-For`, which it does (as `keyrelay api` runs it) for connections from
FORWARDED_ALLOW_IPS, 127.0.0.1 by default. Consequences:
- behind a reverse proxy on the same host, each caller is the address the proxy reports; a
  proxy elsewhere must be trusted by address (FORWARDED_ALLOW_IPS), or every caller shares the
  proxy's budget. Never trust `*` on an exposed port: each caller would pick its own budget by
  sending the header. (For the same reason, any process on the API's host can pick its budget.)
- callers behind one NAT share a budget, and an IPv6 caller with a whole prefix has many.
Not per token: a guesser sends as many different wrong tokens as it likes, and callers often
share one valid token.

Each app has its own budgets and, unless one is passed to `create_app`, its own in-memory
storage, so two apps in one process never share counters. A shared storage
(`limits.storage.storage_from_string`, e.g. Redis) lets several API processes share budgets;
every `ClientRateLimit` on it counts under its own `name`, so budgets never mix."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, MovingWindowSupport, Storage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import Scope

from keystore.errors import ConfigError

__all__ = ["ClientRateLimit", "client_address"]

UNKNOWN_CLIENT = "unknown"  # no peer address (a Unix socket): all such callers share a budget


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else UNKNOWN_CLIENT


class ClientRateLimit:
    """`hit(client)` takes one request from the client's budget; it returns None when the request
    may go on, else the whole seconds until the window has room again (>= 1).

    `setting` names the environment variable the rate came from, for the error when it does not
    parse. `clock` (epoch seconds) must be the clock the storage measures windows with; tests
    inject a storage and clock pair so recovery needs no sleeping."""

    def __init__(
        self,
        rate: str,
        *,
        name: str = "requests",
        setting: str = "KEYRELAY_API_RATE_LIMIT",
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            self.item: RateLimitItem = parse(rate)
        except ValueError:
            raise ConfigError(
                f"{setting} {rate!r} is not a rate such as '10/minute' or '3/second'"
            ) from None
        self.name = name
        self.storage = storage if storage is not None else MemoryStorage()
        if not isinstance(self.storage, MovingWindowSupport):
            raise ConfigError("the rate-limit storage must support the moving-window strategy")
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._clock = clock

    def hit(self, client: str) -> int | None:
        if self._limiter.hit(self.item, self.name, client):
            return None
        reset_at, _remaining = self._limiter.get_window_stats(self.item, self.name, client)
        return max(1, math.ceil(reset_at - self._clock()))

    def reset(self) -> None:
        """Forget every client's usage (of every budget on this storage)."""
        self.storage.reset()
