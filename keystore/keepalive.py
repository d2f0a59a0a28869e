"""KeepAlive: a daemon thread renewing one lease at a third of its TTL, for synchronous holders
(`Keystore.lease()`). Async holders in flows use flows/leasing.py, which cancels the work itself.

Renewals that fail to reach the database are retried (the database layer already backs off for
about 12 s; after that the next tick tries again). A lease found expired and reclaimed is lost:
its slot may be someone else's now. A thread cannot stop the holder's work, so the loss is
reported instead: `lost` turns True, and `Keystore.lease()` raises LeaseLost when the block ends.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from keystore.errors import LeaseLost
from keystore.lease import Lease

if TYPE_CHECKING:
    from keystore.store import Keystore

__all__ = ["KeepAlive"]

log = logging.getLogger(__name__)


class KeepAlive:
    def __init__(self, store: Keystore, lease: Lease, *, ttl_s: float) -> None:
        self.lost = False
        self._store, self._lease, self._ttl_s = store, lease, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"keyrelay-renew-{lease.id[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            try:
                self._store.renew(self._lease, self._ttl_s)
            except LeaseLost:
                self.lost = True
                log.warning("lease %s on key %s was lost", self._lease.id, self._lease.key_id)
                return
            except Exception:
                log.exception("renewing lease %s failed; will try again", self._lease.id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
