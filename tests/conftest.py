"""Shared fixtures. Keystore tests run on SQLite and PostgreSQL alike (`store_url` is parametrized).

PostgreSQL: KEYRELAY_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
Each test session migrates its own schema once and truncates between tests. Without a server the
PostgreSQL cases skip, unless KEYRELAY_REQUIRE_POSTGRES=1 (CI sets it), which turns the skip into
a failure."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from keystore import Keystore, ManualClock, MasterKey
from keystore.db import create_keystore_engine, upgrade

# Prefect reads its settings when first imported: keep the test session's state in a temporary
# home, never in ~/.prefect, and let events reach the server quickly.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="keyrelay-test-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

PG_URL = os.environ.get(
    "KEYRELAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("KEYRELAY_REQUIRE_POSTGRES") == "1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TABLES = (
    "lease_slots",
    "key_limits",
    "keys",
    "audit_events",
    "rotation_config",
    "checkpoints",
    "run_waits",
    "workdir_snapshots",
)


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema private to this test session."""
    problem = _pg_available()
    if problem:
        if REQUIRE_PG:
            pytest.fail(problem + " (KEYRELAY_REQUIRE_POSTGRES=1)")
        pytest.skip(problem)
    schema = f"kr_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    engine = create_keystore_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty keystore database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keystore.db'}"
        engine = create_keystore_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("pg_schema_url")
    engine = create_keystore_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def master() -> MasterKey:
    return MasterKey([Fernet.generate_key()])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def ks(store_url: str, master: MasterKey, clock: ManualClock) -> Iterator[Keystore]:
    store = Keystore(create_keystore_engine(store_url), master, clock=clock)
    yield store
    store.close()


def secret_for(tag: str) -> str:
    """A realistic-looking, unique test secret."""
    return f"sk-ant-api03-{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}-TAIL"
