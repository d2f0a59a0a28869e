"""Taking a lease: the loop around `leases.acquire_slot` that the facade's `acquire` runs.

One attempt takes the best free slot in one statement (leases.py). Around it:

- a slot whose previous lease expired unreleased is recorded as `lease_reclaimed`;
- on PostgreSQL, the key's buckets are looked at again once the slot is held, and the slot is
  given back if a lease committed meanwhile took the room (`leases.still_admitted`);
- no slot taken: `candidates` tells "nothing can serve" (NoKeyAvailable with its reset) from
  "free slots were being taken by concurrent acquirers" (try again after a short backoff);
- a key whose secret does not decrypt with this process's master key is given back and skipped
  in this process only (keystore/decryptable.py)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from keystore import candidates, decryptable, leases
from keystore.clock import Clock
from keystore.crypto import MasterKey
from keystore.db import Database
from keystore.errors import NoKeyAvailable
from keystore.lease import Lease

__all__ = ["Acquirer"]

log = logging.getLogger(__name__)
CONTENDED_RETRIES = 50
CONTENDED_WAIT_MAX_S = 0.02  # between retries on contended slots: ~0.8 s in all


class Acquirer:
    """Leases for one keystore. `record` writes an audit row, `release` frees a lease (the
    facade's own methods)."""

    def __init__(
        self,
        db: Database,
        master: MasterKey,
        *,
        clock: Clock,
        record: Callable[..., Any],
        release: Callable[[Lease], bool],
    ) -> None:
        self.db, self.master, self._clock = db, master, clock
        self._record, self._release = record, release
        # provider -> whether some of its keys do not decrypt here (absent: not looked yet)
        self._undecryptable_here: dict[str, bool] = {}

    def acquire(
        self,
        *,
        provider: str,
        holder: str,
        ttl_s: float,
        threshold: float,
        prefer_key: int | None,
        input_tokens: int | None,
    ) -> Lease:
        """The arguments are validated by the caller (Keystore.acquire)."""
        prefer_key = self._prefer_decryptable(provider, prefer=prefer_key, threshold=threshold)
        for attempt in range(CONTENDED_RETRIES):
            now, lease_id = self._clock(), leases.new_lease_id()
            got = self.db.statement(
                functools.partial(
                    leases.acquire_slot,
                    lease_id=lease_id,
                    now=now,
                    provider=provider,
                    holder=holder,
                    ttl_s=ttl_s,
                    threshold=threshold,
                    prefer=prefer_key,
                    input_tokens=input_tokens,
                ),
                already_applied=functools.partial(leases.find_lease, lease_id=lease_id),
            )
            if got is not None and got.reclaimed is not None:  # its holder died holding it
                old_lease, old_holder = got.reclaimed
                self._record(
                    "lease_reclaimed", key_id=got.key_id, lease_id=old_lease, holder=old_holder
                )
            if got is not None and not self._still_admitted(got, now, input_tokens):
                self._give_back(got, provider=provider, holder=holder)  # another lease won
                got = None
            if got is None:
                self._raise_if_exhausted(
                    provider, now=now, threshold=threshold, input_tokens=input_tokens
                )
                # PostgreSQL skipped slots other transactions were taking: let them commit
                time.sleep(min(CONTENDED_WAIT_MAX_S, 0.001 * 2**attempt))
                continue
            if not self.master.can_decrypt(got.ciphertext):
                prefer_key = self._skip_undecryptable(
                    got, provider=provider, holder=holder, prefer=prefer_key, threshold=threshold
                )
                continue
            return self._lease(got, provider=provider, holder=holder)
        raise NoKeyAvailable(
            provider,
            reason="all_busy",
            retry_at=self._clock(),
            detail=["every free slot was taken by concurrent acquirers; retry"],
        )

    def _raise_if_exhausted(
        self, provider: str, *, now: datetime, threshold: float, input_tokens: int | None
    ) -> None:
        found = self.db.read(
            functools.partial(
                candidates.candidates,
                provider=provider,
                now=now,
                threshold=threshold,
                input_tokens=input_tokens,
            )
        )
        error = candidates.exhausted(found, provider=provider, now=now)
        if error is not None:
            raise error

    def _lease(self, got: leases.Acquired, *, provider: str, holder: str) -> Lease:
        return Lease(
            id=got.lease_id,
            key_id=got.key_id,
            key_name=got.key_name,
            provider=provider,
            holder=holder,
            acquired_at=got.acquired_at,
            expires_at=got.expires_at,
            _reveal=functools.partial(self.master.decrypt, got.ciphertext),
        )

    def _still_admitted(
        self, got: leases.Acquired, now: datetime, input_tokens: int | None
    ) -> bool:
        """SQLite's acquiring transaction is the only writer, so what it counted holds; on
        PostgreSQL see `leases.still_admitted`."""
        if self.db.dialect != "postgresql":
            return True
        return self.db.read(
            functools.partial(leases.still_admitted, got=got, now=now, input_tokens=input_tokens)
        )

    def _give_back(self, got: leases.Acquired, *, provider: str, holder: str) -> None:
        """Release a slot just taken that the caller will not get."""
        self._release(self._lease(got, provider=provider, holder=holder))

    def _prefer_decryptable(
        self, provider: str, *, prefer: int | None, threshold: float
    ) -> int | None:
        """The key to take first: `prefer`, unless some of the provider's keys do not decrypt
        here; then the best key among those that do (see keystore/decryptable.py). Looks once
        per provider, and again each time a key fails to decrypt."""
        if self._undecryptable_here.get(provider) is False:
            return prefer
        now = self._clock()
        bad, chosen = self.db.read(
            lambda conn: decryptable.choose_decryptable(
                conn, self.master, provider=provider, now=now, threshold=threshold, prefer=prefer
            )
        )
        self._undecryptable_here[provider] = bool(bad)
        return prefer if chosen is None else chosen

    def _skip_undecryptable(
        self,
        got: leases.Acquired,
        *,
        provider: str,
        holder: str,
        prefer: int | None,
        threshold: float,
    ) -> int | None:
        """The leased key does not decrypt with this process's master key. Another process may
        hold the right one, so nothing shared is marked: give the slot back and choose among the
        keys that decrypt here (MasterKeyError when there are none)."""
        self._give_back(got, provider=provider, holder=holder)
        log.error(
            "key %s (%s) %s; skipped in this process only",
            got.key_id,
            got.key_name,
            decryptable.not_here_reason(self.master),
        )
        self._undecryptable_here.pop(provider, None)
        return self._prefer_decryptable(provider, prefer=prefer, threshold=threshold)
