"""Helpers of the executor tests: realistic secrets, and leasing exactly one given key.

`leased(...)` adds a key, leases exactly that key, and releases and deletes it afterwards, so
tests sharing a module's keystore do not see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from keystore import Keystore, Lease

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the emulator fixtures' ManualClock starts here


@contextmanager
def leased(store: Keystore, provider: str, secret: str) -> Iterator[Lease]:
    key = store.add_key(name=f"test-{uuid.uuid4().hex[:8]}", provider=provider, secret=secret)
    lease = store.acquire(provider=provider, holder="executor-test")
    try:
        assert lease.key_id == key.id, "another key of this provider is still in the keystore"
        yield lease
    finally:
        store.release(lease)
        store.delete_key(key.id, force=True)


def api_key(tag: str) -> str:
    return f"sk-ant-api03-{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}-TAIL"


def oauth_token(tag: str) -> str:
    return f"sk-ant-oat01-{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}-TAIL"


def openai_key(tag: str) -> str:
    return f"sk-proj-{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}-TAIL"
