"""Whether a key may be leased: the one rule, as SQL for queries and as a state for views.

A key is in the pool when it is enabled and usable (it decrypts, and no refusal that only a
person can lift benched it). It is eligible now when, in addition, it is not cooling and has a
free lease slot. Everything that asks "can this key serve?" (acquisition, `explain`, `status`,
`earliest_reset`, the capacity a reset brings back) goes through these functions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from keystore.models import Key, KeyState

__all__ = ["cooling_at", "in_pool", "key_state", "usable_at"]

_keys = Key.__table__.c  # type: ignore[attr-defined]


def in_pool(keys: Any = _keys) -> ColumnElement[bool]:
    """Enabled and usable: the keys a timer can bring back."""
    return and_(keys.enabled.is_(True), keys.unusable_reason.is_(None))


def usable_at(at: Any, keys: Any = _keys) -> ColumnElement[bool]:
    """In the pool and not cooling at `at` (a datetime or a bound parameter)."""
    return and_(in_pool(keys), or_(keys.cooling_until.is_(None), keys.cooling_until <= at))


def cooling_at(at: Any, keys: Any = _keys) -> ColumnElement[bool]:
    """In the pool, but cooling at `at`."""
    return and_(in_pool(keys), keys.cooling_until > at)


def key_state(row: Any, *, active_leases: int, now: datetime) -> KeyState:
    """The same rule for one row already read (any object with the key's columns)."""
    if not row.enabled:
        return "disabled"
    if row.unusable_reason:
        return "unusable"
    if row.cooling_until is not None and row.cooling_until > now:
        return "cooling"
    if active_leases >= row.max_concurrency:
        return "busy"
    return "available"
