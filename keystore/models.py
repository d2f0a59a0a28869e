"""SQLModel tables and the public, secret-free models.

One family per entity: `KeyBase` (shared fields), `KeyCreate` / `KeyUpdate` (input),
`Key` (table), `KeyPublic` (output: masked form and fingerprint, never the secret)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, SecretStr, field_validator, model_validator
from sqlalchemy import JSON, Column, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy import ForeignKey as SAForeignKey
from sqlmodel import Field, SQLModel

from keystore.types import UTCDateTime

__all__ = [
    "PROVIDERS",
    "AuditEvent",
    "AuditEventPublic",
    "Checkpoint",
    "ConfigRow",
    "Key",
    "KeyBase",
    "KeyCreate",
    "KeyLimit",
    "KeyPublic",
    "KeyState",
    "KeyUpdate",
    "LeaseSlot",
    "Provider",
    "RunWait",
    "UnusableKind",
    "WorkdirSnapshot",
]

Provider = Literal["claude-code", "anthropic", "openai"]
PROVIDERS: tuple[Provider, ...] = ("claude-code", "anthropic", "openai")
KeyState = Literal["available", "busy", "cooling", "disabled", "unusable"]
# Why a key is out of the pool until a person resets it: a quota only a person lifts, the
# provider rejected the key, it does not decrypt, or an operator said so.
UnusableKind = Literal["quota", "rejected", "decrypt"]

MAX_CONCURRENCY_CAP = 1000  # one slot row per unit of concurrency; keep the table small
PRIORITY_MIN, PRIORITY_MAX = -1_000_000, 1_000_000
KEY_ID_MAX = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
NAME_MAX = 200
SECRET_MAX = 8192


def _utc_column(**kwargs: Any) -> Any:
    return Field(default=None, sa_type=UTCDateTime, **kwargs)


PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # no ASCII control characters


def _printable(value: str | None) -> str | None:
    # Control characters (NUL above all: PostgreSQL refuses it in text) have no place in a label.
    if value is not None and re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError("must not contain control characters")
    return value


class KeyBase(SQLModel):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    provider: Provider = Field(sa_type=String(32))
    priority: int = Field(default=100, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    max_concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY_CAP)
    enabled: bool = True
    group: str | None = Field(default=None, max_length=NAME_MAX)

    _labels = field_validator("name", "group")(_printable)


RESERVE_MAX = 0.9  # a key must leave something to use


class KeyCreate(KeyBase):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    secret: SecretStr = Field(min_length=1, max_length=SECRET_MAX)
    # Fraction of a subscription window to leave unused (an account shared with people).
    reserve: float = Field(default=0.0, ge=0, le=RESERVE_MAX)

    @field_validator("secret")
    @classmethod
    def _no_whitespace(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text != text.strip() or not text.isprintable():
            raise ValueError("secret must not contain whitespace or control characters at its ends")
        return value


class KeyUpdate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    priority: int | None = Field(default=None, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_CAP)
    enabled: bool | None = None
    group: str | None = Field(default=None, max_length=NAME_MAX)  # None clears the group
    secret: SecretStr | None = Field(default=None, min_length=1, max_length=SECRET_MAX)
    reserve: float | None = Field(default=None, ge=0, le=RESERVE_MAX)

    _labels = field_validator("name", "group")(_printable)

    @model_validator(mode="after")
    def _no_null_for_required(self) -> KeyUpdate:
        for name in ("name", "priority", "max_concurrency", "enabled", "secret", "reserve"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class Key(KeyBase, table=True):
    __tablename__ = "keys"
    __table_args__ = (Index("ix_keys_provider_priority", "provider", "priority"),)

    id: int | None = Field(default=None, primary_key=True)
    ciphertext: str = Field(sa_type=Text)
    fingerprint: str = Field(sa_type=String(16), unique=True)
    masked: str = Field(sa_type=String(32))
    unusable_reason: str | None = None
    unusable_kind: str | None = Field(default=None, sa_type=String(16))  # see UnusableKind
    unusable_since: datetime | None = _utc_column()
    unreset_limit_at: datetime | None = _utc_column()  # last limit that named no reset
    cooling_until: datetime | None = _utc_column()
    cooling_reason: str | None = None
    reserve: float = 0.0  # see KeyCreate
    # Usage of slots that no longer exist; live usage is counted on the slots (see LeaseSlot).
    last_used_at: datetime | None = _utc_column()
    uses: int = 0
    rate_limit_hits: int = 0
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class KeyPublic(KeyBase):
    """What the API, CLI and logs may show about a key."""

    id: int
    masked: str
    fingerprint: str
    state: KeyState
    active_leases: int
    cooling_until: datetime | None
    cooling_reason: str | None
    utilization: float | None
    last_used_at: datetime | None
    uses: int
    rate_limit_hits: int
    created_at: datetime


class LeaseSlot(SQLModel, table=True):
    """One row per unit of a key's concurrency. A lease is an occupied, unexpired slot, so a key can
    never hold more leases than it has slots: the cap is structural, not a count-then-insert.
    Usage counters live here too, so taking a lease writes one slot row and never the key row
    that every acquirer of that key would otherwise queue on."""

    __tablename__ = "lease_slots"
    __table_args__ = (UniqueConstraint("key_id", "slot"),)

    id: int | None = Field(default=None, primary_key=True)
    key_id: int = Field(
        sa_column=Column(Integer, SAForeignKey("keys.id", ondelete="CASCADE"), nullable=False)
    )
    slot: int
    lease_id: str | None = Field(default=None, sa_type=String(32), unique=True)
    holder: str | None = Field(default=None, max_length=500)
    acquired_at: datetime | None = _utc_column()
    expires_at: datetime | None = _utc_column()
    uses: int = 0
    last_acquired_at: datetime | None = _utc_column()
    # The request size the holder announced (input tokens): counted against the key's token
    # buckets until a response observed after this lease was taken accounts for it.
    reserved_tokens: int = 0
    # How long this slot's leases are usually held (seconds, a moving average): when a busy key
    # is expected to have a slot again.
    hold_s: float | None = None


class KeyLimit(SQLModel, table=True):
    """What the provider last said about one of a key's limit buckets (requests, tokens,
    input-tokens, output-tokens for API keys; unified-5h, unified-7d, ... for subscriptions).
    Nothing here is trusted past `reset_at`: after it the bucket is full again."""

    __tablename__ = "key_limits"

    key_id: int = Field(
        sa_column=Column(
            Integer, SAForeignKey("keys.id", ondelete="CASCADE"), primary_key=True, nullable=False
        )
    )
    bucket: str = Field(sa_type=String(32), primary_key=True)
    limit: float | None = None
    remaining: float | None = None
    utilization: float | None = None
    reset_at: datetime = Field(sa_type=UTCDateTime)
    observed_at: datetime = Field(sa_type=UTCDateTime)
    rejected: bool = False


class AuditEvent(SQLModel, table=True):
    """Append-only and hash-chained: `hash` covers the row and the previous row's hash."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_type_at", "type", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime)
    type: str = Field(sa_type=String(40))
    key_id: int | None = Field(default=None, index=True)
    run_id: str | None = Field(default=None, sa_type=String(200), index=True)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(sa_type=String(64))
    hash: str = Field(sa_type=String(64))


class AuditEventPublic(SQLModel):
    id: int
    at: datetime
    type: str
    key_id: int | None
    run_id: str | None
    details: dict[str, Any]


class ConfigRow(SQLModel, table=True):
    """RotationConfig lives in the database so the CLI, the API and every worker share it."""

    __tablename__ = "rotation_config"

    id: int = Field(default=1, primary_key=True)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_type=UTCDateTime)


class Checkpoint(SQLModel, table=True):
    """What a resumed run needs (conversation, CLI session transcript); one row per run."""

    __tablename__ = "checkpoints"

    run_id: str = Field(primary_key=True, sa_type=String(200))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_type=UTCDateTime)


class WorkdirSnapshot(SQLModel, table=True):
    """A deferred run's default working directory as a gzipped tar, so a worker that does not
    have the directory can restore it when it picks the run up."""

    __tablename__ = "workdir_snapshots"

    run_id: str = Field(primary_key=True, sa_type=String(200))
    archive: bytes = Field(sa_type=LargeBinary)
    size_bytes: int
    files: int
    taken_at: datetime = Field(sa_type=UTCDateTime)


class RunWait(SQLModel, table=True):
    """A deferred run waiting for a provider's keys to reset (orders resumptions: first come,
    first served)."""

    __tablename__ = "run_waits"
    __table_args__ = (Index("ix_run_waits_provider_resume", "provider", "resume_at"),)

    run_id: str = Field(primary_key=True, sa_type=String(200))
    provider: str = Field(sa_type=String(32))
    waiting_since: datetime = Field(sa_type=UTCDateTime)
    reset_at: datetime = Field(sa_type=UTCDateTime)
    resume_at: datetime = Field(sa_type=UTCDateTime)
