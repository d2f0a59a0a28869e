"""A fresh keyrelay keystore per run, holding the workload's keys (max_concurrency 4 each, and
the workload's group): SQLite in the run's temporary directory, or a fresh schema in PostgreSQL
(`KEYRELAY_BENCH_POSTGRES_URL`, default the local test database)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from bench.goodput.workloads import Workload
from keystore import Keystore, MasterKey
from keystore.db import create_keystore_engine, upgrade

__all__ = ["MAX_CONCURRENCY", "PG_URL", "KeystoreHandle", "create_keystore"]

MAX_CONCURRENCY = 4
PG_URL = os.environ.get(
    "KEYRELAY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class KeystoreHandle:
    url: str
    master_key: str
    drop: Callable[[], None]  # forget it (PostgreSQL: drop the schema)


def _nothing() -> None:
    pass


def _postgres_schema() -> tuple[str, Callable[[], None]]:
    schema = f"kr_goodput_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{PG_URL}?options=-csearch_path%3D{schema}", drop


def create_keystore(workload: Workload, *, backend: str, workdir: Path) -> KeystoreHandle:
    if backend == "sqlite":
        url, drop = f"sqlite:///{workdir / f'keystore-{uuid.uuid4().hex[:6]}.db'}", _nothing
    elif backend == "postgres":
        url, drop = _postgres_schema()
    else:
        raise ValueError(f"unknown keystore backend {backend!r}")
    engine = create_keystore_engine(url)
    upgrade(engine)
    master_key = Fernet.generate_key()
    store = Keystore(engine, MasterKey([master_key]))
    for index, secret in enumerate(workload.keys):
        store.add_key(
            name=f"{workload.name}-{index}",
            provider="anthropic",
            secret=secret,
            max_concurrency=MAX_CONCURRENCY,
            group=workload.group,
        )
    store.close()
    return KeystoreHandle(url=url, master_key=master_key.decode(), drop=drop)
