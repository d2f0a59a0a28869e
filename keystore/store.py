"""Keystore: the public facade over the database, the pool and the crypto.

    ks = open_keystore()
    ks.add_key(name="team-a", provider="anthropic", secret=...)
    with ks.lease(provider="anthropic", holder="my-job") as lease:
        client = Anthropic(api_key=lease.secret(), max_retries=0)

Every method validates its arguments and runs one short transaction through `Database`; the
work itself lives in the modules named for it (keys, acquiring, leases, cooling, waits,
checkpoints, rekey, views). Audit hooks run after commit."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from keystore import audit as audit_log
from keystore import (
    candidates,
    checkpoints,
    cooling,
    decryptable,
    keys,
    leases,
    limits,
    rekey,
    snapshots,
    views,
    waits,
)
from keystore.acquiring import Acquirer
from keystore.clock import Clock, utcnow
from keystore.config import RotationConfig, load_config, save_config, updated_config
from keystore.crypto import MasterKey
from keystore.db import RETRY_DELAYS_S, Database
from keystore.errors import InvalidInput, KeyNotFound, LeaseLost
from keystore.holders import LeaseHolderPublic, list_active_leases
from keystore.keepalive import KeepAlive
from keystore.lease import Lease
from keystore.migrate import migrate_env_tokens
from keystore.models import KEY_ID_MAX, PROVIDERS, AuditEventPublic, KeyCreate, KeyPublic, KeyUpdate
from keystore.opening import holds_keys, open_database
from keystore.ratelimits import RateLimitSignal, parse_rate_limit
from keystore.ratelimits.body import BodyLike
from keystore.ratelimits.headers import HeadersLike
from keystore.ratelimits.readings import read_limits
from keystore.settings import Settings
from keystore.views import BucketPublic, Explanation, PoolStatus

__all__ = ["Keystore", "open_keystore"]

T = TypeVar("T")
log = logging.getLogger(__name__)
CONFIG_CACHE_S = 1.0  # how stale a worker's view of RotationConfig may be
AUDIT_LIMIT_MAX = 10_000


def _invalid(exc: ValidationError) -> InvalidInput:
    """Name the field and the rule, never the submitted value (it may be a secret)."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "input"
    return InvalidInput(f"{field}: {first['msg']}")


def _check_key_id(key_id: int) -> None:
    """An id no key can have is simply not found (and never reaches the database, where an
    out-of-range integer would be an error rather than an empty result)."""
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 1 <= key_id <= KEY_ID_MAX:
        raise KeyNotFound(key_id)


def _check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise InvalidInput(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")


class Keystore:
    def __init__(
        self,
        engine: Engine,
        master: MasterKey,
        *,
        clock: Clock = utcnow,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        """`retry_delays_s`: the waits before each retry of a transient database failure (see
        keystore/db.py); after the last, KeystoreUnreachable."""
        self.db = Database(engine, retry_delays_s=retry_delays_s)
        self.master = master
        self._clock = clock
        self._hooks: list[audit_log.AuditHook] = []
        self._config_cache: tuple[float, RotationConfig] | None = None
        self._acquirer = Acquirer(
            self.db, master, clock=clock, record=self.record, release=self.release
        )

    @property
    def engine(self) -> Engine:
        return self.db.engine

    # -- plumbing -------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self._clock()

    def add_audit_hook(self, hook: audit_log.AuditHook) -> None:
        self._hooks.append(hook)

    def remove_audit_hook(self, hook: audit_log.AuditHook) -> None:
        self._hooks.remove(hook)

    def _write(self, body: Callable[[audit_log.AuditWriter], T]) -> T:
        result, written = self.db.write(body, now=self._clock)
        audit_log.fire_hooks(self._hooks, written)
        return result

    def _read(self, body: Callable[[Connection], T]) -> T:
        return self.db.read(body)

    def close(self) -> None:
        self.db.close()

    # -- keys -----------------------------------------------------------------------------------
    def add_key(
        self,
        *,
        name: str,
        provider: str,
        secret: str,
        priority: int = 100,
        max_concurrency: int = 1,
        enabled: bool = True,
        group: str | None = None,
        reserve: float = 0.0,
    ) -> KeyPublic:
        """`reserve`: the share of a subscription window to leave unused (an account shared with
        people), 0 to 0.9."""
        fields = {"name": name, "provider": provider, "secret": secret, "priority": priority}
        fields |= {"max_concurrency": max_concurrency, "enabled": enabled, "group": group}
        fields |= {"reserve": reserve}
        try:
            create = KeyCreate.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return self._write_key(
            lambda w: keys.add_key(w.conn, audit=w, master=self.master, create=create)
        )

    def get_key(self, key_id: int) -> KeyPublic:
        _check_key_id(key_id)
        return self._read(lambda conn: self._shown(conn, key_id))

    def _shown(self, conn: Connection, key_id: int) -> KeyPublic:
        return decryptable.key_here(
            conn, self.master, keys.get_key(conn, key_id, now=self._clock())
        )

    def _write_key(self, body: Callable[[audit_log.AuditWriter], int]) -> KeyPublic:
        """Run a write that changes one key (`body` returns its id) and return the key as that
        transaction left it. Read afterwards in a transaction of its own, a key deleted in
        between would make an applied change look like KeyNotFound (seen in the concurrency
        hunt: a cap raise that took effect, reported to its caller as a failure)."""
        return self._write(lambda w: self._shown(w.conn, body(w)))

    def list_keys(self, provider: str | None = None) -> list[KeyPublic]:
        if provider is not None:
            _check_provider(provider)
        return self._read(
            lambda conn: decryptable.keys_here(
                conn, self.master, keys.list_keys(conn, now=self._clock(), provider=provider)
            )
        )

    def update_key(self, key_id: int, *, force: bool = False, **changes: Any) -> KeyPublic:
        """Change name, priority, max_concurrency, enabled, group or secret. Refuses to disable a
        provider's last enabled key unless `force`."""
        _check_key_id(key_id)
        try:
            update = KeyUpdate(**changes)
        except ValidationError as exc:
            raise _invalid(exc) from None

        def update_key(w: audit_log.AuditWriter) -> int:
            keys.update_key(w.conn, key_id, audit=w, master=self.master, update=update, force=force)
            return key_id

        return self._write_key(update_key)

    def delete_key(self, key_id: int, *, force: bool = False) -> None:
        _check_key_id(key_id)
        self._write(lambda w: keys.delete_key(w.conn, key_id, audit=w, force=force))

    def reset_key(self, key_id: int) -> KeyPublic:
        """Clear cooling and unusable marks (a person says the key works again)."""
        _check_key_id(key_id)

        def reset_key(w: audit_log.AuditWriter) -> int:
            keys.reset_key(w.conn, key_id, audit=w)
            return key_id

        return self._write_key(reset_key)

    def migrate_env_tokens(self, environ: Mapping[str, str] | None = None) -> list[KeyPublic]:
        env = os.environ if environ is None else environ

        def migrate(w: audit_log.AuditWriter) -> list[KeyPublic]:
            added = migrate_env_tokens(w.conn, audit=w, master=self.master, environ=env)
            return [self._shown(w.conn, key_id) for key_id in added]

        return self._write(migrate)

    # -- leases ---------------------------------------------------------------------------------
    def acquire(
        self,
        *,
        provider: str,
        holder: str,
        ttl_s: float | None = None,
        prefer_key: int | None = None,
        input_tokens: int | None = None,
    ) -> Lease:
        """Lease the best eligible key, or raise NoKeyAvailable(retry_at, reason).

        `prefer_key`: the key this holder used last; it is taken whenever it can serve (affinity:
        prompt caches are per organisation), otherwise the usual order applies. `input_tokens`:
        the request's estimated size; a key whose token buckets cannot hold it is passed over,
        and it is counted against the key until a response read after this lease accounts for
        it (see limits.py)."""
        if input_tokens is not None and input_tokens < 0:
            raise InvalidInput("input_tokens: must not be negative")
        _check_provider(provider)
        config = self._recent_config()
        ttl = config.lease_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise InvalidInput("ttl_s: must be greater than 0")
        return self._acquirer.acquire(
            provider=provider,
            holder=holder,
            ttl_s=ttl,
            threshold=config.proactive_threshold,
            prefer_key=prefer_key,
            input_tokens=input_tokens,
        )

    def renew(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        ttl = self._recent_config().lease_ttl_s if ttl_s is None else ttl_s
        expires = self.db.statement(
            lambda conn: leases.renew_lease(conn, lease_id=lease.id, ttl_s=ttl, now=self._clock()),
            durable=False,  # a renewal lost in a crash is redone at the next third of the TTL
        )
        if expires is None:
            raise LeaseLost(lease.id)
        lease.expires_at = expires
        return lease

    def release(self, lease: Lease) -> bool:
        """Free the lease's slot. False when it had already expired and been reclaimed."""
        # Not durable: a release lost in a crash leaves the slot held until the lease expires.
        held_s = max(0.0, (self._clock() - lease.acquired_at).total_seconds())
        released = self.db.statement(
            lambda conn: leases.release_lease(conn, lease_id=lease.id, held_s=held_s),
            durable=False,
            already_applied=functools.partial(leases.released_before, lease_id=lease.id),
        )
        if released.surplus_slot is not None:  # max_concurrency was lowered while it was out
            key_id, slot_id = released.surplus_slot
            self._write(lambda w: leases.drop_surplus_slot(w.conn, key_id=key_id, slot_id=slot_id))
        return released.held

    @contextlib.contextmanager
    def lease(self, *, provider: str, holder: str, ttl_s: float | None = None) -> Iterator[Lease]:
        """Acquire, renew every third of the TTL in a background thread, release in `finally`.
        Raises LeaseLost at the end of the block if the lease expired and was reclaimed while
        the block ran (its slot may have been someone else's meanwhile)."""
        ttl = self._recent_config().lease_ttl_s if ttl_s is None else ttl_s
        held = self.acquire(provider=provider, holder=holder, ttl_s=ttl)
        keeper = self.keep_alive(held, ttl_s=ttl)
        try:
            yield held
        finally:
            keeper.stop()
            self.release(held)
        if keeper.lost:
            raise LeaseLost(held.id)

    def keep_alive(self, lease: Lease, *, ttl_s: float | None = None) -> KeepAlive:
        """Renew `lease` every third of its TTL until `.stop()` (or until it is lost)."""
        ttl = self._recent_config().lease_ttl_s if ttl_s is None else ttl_s
        return KeepAlive(self, lease, ttl_s=ttl)

    def reclaim_expired(self) -> int:
        return self._write(lambda w: leases.reclaim_expired(w.conn, audit=w))

    def reclaim_leases_of(self, holder_prefix: str) -> int:
        """Free now every lease whose holder starts with `holder_prefix` (`"flow-run <id> "`: a
        crashed run starting again), instead of waiting for their expiry; each is a
        lease_reclaimed row. Returns how many were freed."""
        if not holder_prefix.strip():
            raise InvalidInput("holder_prefix: must not be empty")
        return self._write(
            lambda w: leases.reclaim_held_by(w.conn, holder_prefix=holder_prefix, audit=w)
        )

    # -- limits ---------------------------------------------------------------------------------
    def mark_limited(
        self, key_id: int, signal: RateLimitSignal, *, run_id: str | None = None
    ) -> cooling.Marked:
        _check_key_id(key_id)
        cooldown = self._recent_config().no_reset_cooldown_s
        return self._write(
            lambda w: cooling.mark_limited(
                w.conn, key_id, signal, audit=w, no_reset_cooldown_s=cooldown, run_id=run_id
            )
        )

    def mark_unusable(self, key_id: int, reason: str, *, run_id: str | None = None) -> None:
        """Take a key out of the pool until a person resets it (the provider rejected it)."""
        _check_key_id(key_id)
        self._write(
            lambda w: cooling.set_unusable(
                w.conn, key_id, reason=reason, kind="rejected", audit=w, run_id=run_id
            )
        )

    def record_response(
        self,
        key_id: int,
        *,
        provider: str,
        status: int,
        headers: HeadersLike,
        body: BodyLike = None,
        received_at: datetime | None = None,
        run_id: str | None = None,
    ) -> RateLimitSignal | None:
        """What a provider said in one response on `key_id`, success or refusal: the one entry
        point for limit state. Stores every bucket the headers report (remaining, limit, reset;
        subscription windows' utilization), so acquisition stops leasing a key whose bucket is
        spent before its reset; on a refusal also cools the key (and its group) as mark_limited
        does. Returns the refusal's signal, or None for a response that is not a limit."""
        _check_key_id(key_id)
        if provider not in (*PROVIDERS, "gemini"):
            _check_provider(provider)
        received = received_at or self._clock()
        signal = parse_rate_limit(
            provider, status=status, headers=headers, body=body, received_at=received
        )
        readings = read_limits(provider, headers=headers, received_at=received)
        cooldown = self._recent_config().no_reset_cooldown_s

        def body_(w: audit_log.AuditWriter) -> None:
            limits.record_readings(w.conn, key_id, readings, observed_at=received)
            if signal is not None and signal.cools_key:
                cooling.mark_limited(
                    w.conn, key_id, signal, audit=w, no_reset_cooldown_s=cooldown, run_id=run_id
                )

        try:
            self._write(body_)
        except IntegrityError:
            # The key was deleted while its reading was being written (the foreign key refused
            # the row): the same answer as for a key deleted before (limits.record_readings).
            if self._read(lambda conn: keys.key_exists(conn, key_id)):
                raise
            raise KeyNotFound(key_id) from None
        return signal

    def earliest_reset(self, provider: str) -> datetime | None:
        _check_provider(provider)
        return self._read(lambda conn: cooling.earliest_reset(conn, provider, now=self._clock()))

    def explain(
        self, provider: str, *, prefer_key: int | None = None, input_tokens: int | None = None
    ) -> Explanation:
        """Per key, whether it is eligible now and why (with what its buckets have left); `chosen`
        is the key acquire would take for a holder whose last key was `prefer_key` and a request
        of `input_tokens`."""
        _check_provider(provider)
        threshold = self._recent_config().proactive_threshold
        return self._read(
            lambda conn: decryptable.explain_here(
                conn,
                self.master,
                provider=provider,
                now=self._clock(),
                threshold=threshold,
                prefer=prefer_key,
                input_tokens=input_tokens,
            )
        )

    def standing_refusal(self, lease: Lease) -> RateLimitSignal | None:
        """Whether the keystore already knows the provider would refuse the next request on
        `lease`'s key (cooling, or a bucket that said it is spent before its reset): a relay
        answers that itself instead of spending a call on a certain refusal. The signal's
        `source` starts with LOCAL_REFUSAL."""
        return self._read(
            lambda conn: candidates.standing_refusal(
                conn, key_id=lease.key_id, lease_id=lease.id, now=self._clock()
            )
        )

    def limits(self, provider: str | None = None) -> list[BucketPublic]:
        """What each key's provider last said about its limit buckets, while it holds."""
        if provider is not None:
            _check_provider(provider)
        return self._read(
            lambda conn: views.bucket_views(conn, now=self._clock(), provider=provider)
        )

    def status(self) -> PoolStatus:
        return self._read(
            lambda conn: decryptable.status_here(
                conn, self.master, views.status(conn, now=self._clock())
            )
        )

    def active_leases(self, provider: str | None = None) -> list[LeaseHolderPublic]:
        """Every unexpired lease (or one provider's) with its key and holder."""
        if provider is not None:
            _check_provider(provider)
        return self._read(
            lambda conn: list_active_leases(conn, now=self._clock(), provider=provider)
        )

    # -- config, audit, checkpoints, waits, master key ------------------------------------------
    def config(self) -> RotationConfig:
        """The current RotationConfig, read from the database."""
        config = self._read(load_config)
        self._config_cache = (time.monotonic(), config)
        return config

    def _recent_config(self) -> RotationConfig:
        """RotationConfig at most CONFIG_CACHE_S old: the hot path does not re-read it per lease."""
        cached = self._config_cache
        if cached is not None and time.monotonic() - cached[0] < CONFIG_CACHE_S:
            return cached[1]
        return self.config()

    def update_config(self, **changes: Any) -> RotationConfig:
        def body(w: audit_log.AuditWriter) -> RotationConfig:
            config = updated_config(load_config(w.conn), changes)
            save_config(w.conn, config)
            return config

        config = self._write(body)
        self._config_cache = (time.monotonic(), config)
        return config

    def record(
        self,
        type: audit_log.AuditType,
        *,
        key_id: int | None = None,
        run_id: str | None = None,
        **details: Any,
    ) -> AuditEventPublic:
        """Write an audit row (flows record rotations, waits and fallbacks through this)."""
        return self._write(lambda w: w.record(type, key_id=key_id, run_id=run_id, **details))

    def audit_events(
        self,
        *,
        limit: int = 100,
        key_id: int | None = None,
        run_id: str | None = None,
        type: str | None = None,
    ) -> list[AuditEventPublic]:
        if not 1 <= limit <= AUDIT_LIMIT_MAX:
            raise InvalidInput(f"limit: must be between 1 and {AUDIT_LIMIT_MAX}")
        if key_id is not None and not 1 <= key_id <= KEY_ID_MAX:
            return []
        return self._read(
            lambda conn: audit_log.list_events(
                conn, limit=limit, key_id=key_id, run_id=run_id, type=type
            )
        )

    def verify_audit(self) -> audit_log.ChainReport:
        return self._read(audit_log.verify_chain)

    def save_checkpoint(self, run_id: str, data: dict[str, Any]) -> None:
        self._write(lambda w: checkpoints.save_checkpoint(w.conn, run_id, data, now=w.now))

    def load_checkpoint(self, run_id: str) -> dict[str, Any] | None:
        return self._read(lambda conn: checkpoints.load_checkpoint(conn, run_id))

    def save_snapshot(self, run_id: str, snapshot: snapshots.Snapshot) -> None:
        """Keep a run's working directory (a gzipped tar) for whichever worker resumes it."""
        self._write(lambda w: snapshots.save_snapshot(w.conn, run_id, snapshot))

    def load_snapshot(self, run_id: str) -> snapshots.Snapshot | None:
        return self._read(lambda conn: snapshots.load_snapshot(conn, run_id))

    def delete_snapshot(self, run_id: str) -> None:
        self._write(lambda w: snapshots.delete_snapshot(w.conn, run_id))

    def register_wait(self, *, run_id: str, provider: str, reset_at: datetime) -> datetime:
        """Queue a deferred run for `provider`'s reset; returns its staggered resume time."""
        _check_provider(provider)
        stagger = self._recent_config().resume_stagger_s
        return self._write(
            lambda w: waits.register_wait(
                w.conn,
                run_id=run_id,
                provider=provider,
                reset_at=reset_at,
                now=w.now,
                stagger_s=stagger,
            )
        )

    def clear_wait(self, run_id: str) -> datetime | None:
        """The run resumed (or gave up): forget its wait. Returns when it was due."""
        return self._write(lambda w: waits.clear_wait(w.conn, run_id))

    def rotate_master_key(self) -> int:
        """Re-encrypt every secret under the first master key (after putting a new key first:
        the key file is rotated here; KEYRELAY_MASTER_KEY must be edited by the operator).
        Processes still running with the old key list keep decrypting: the old key stays.
        Returns how many keys were re-encrypted; all or nothing (see rekey.py)."""
        if not self.master.from_environment:
            self.master.rotate()
        return self._write(lambda w: rekey.reencrypt_all(w, self.master))


def open_keystore(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    clock: Clock = utcnow,
    master_key: MasterKey | None = None,
    migrate: bool = True,
) -> Keystore:
    """Open (and by default upgrade) the keystore at `url`, else at KEYRELAY_DATABASE_URL, else
    SQLite under KEYRELAY_HOME.

    Never silently starts afresh: a keystore that is missing, empty or damaged where one existed
    raises KeystoreUnavailable (see keystore/db.py), and a missing master key file when the
    keystore holds keys raises MasterKeyError; only a first keystore and its key file are
    created without a word."""
    settings = settings or Settings()
    url = url or settings.resolved_database_url
    engine = open_database(
        url,
        migrate=migrate,
        traces=settings.keystore_traces(url),
        busy_timeout_s=settings.sqlite_busy_timeout_s,
    )
    try:
        if master_key is None:
            env_value = settings.master_key.get_secret_value() if settings.master_key else None
            master_key = MasterKey.load(
                env_value=env_value,
                key_file=settings.master_key_file,
                file_is_explicit=settings.master_key_file_path is not None,
                keys_exist=functools.partial(holds_keys, engine),
            )
    except BaseException:
        engine.dispose()
        raise
    return Keystore(engine, master_key, clock=clock)
