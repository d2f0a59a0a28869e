"""Executor test fixtures, as a plugin (`pytest_plugins = ["tests.executors.fixtures"]`).

`keystore` is one SQLite keystore per module (the executors only need real leases; the pool
itself is tested on SQLite and PostgreSQL elsewhere). Helpers to lease a given key are in
`helpers.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from keystore import Keystore, MasterKey, open_keystore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystore]:
    path = tmp_path_factory.mktemp("keystore") / "k.db"
    store = open_keystore(f"sqlite:///{path}", master_key=MasterKey([Fernet.generate_key()]))
    yield store
    store.close()
