"""Shared pieces of the API tests (fixtures are imported by the test_api_* modules).

`api_client` builds an app on the parametrized `ks` (SQLite and PostgreSQL) with a bearer token
and a rate limit high enough not to interfere; `ManualWindowStorage` is a moving-window storage
for the `limits` library that runs on a manual clock, so rate-limit recovery needs no sleeping;
`serve` runs an app under a real uvicorn server (in a thread) for what only a socket shows."""

from __future__ import annotations

import bisect
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from limits.storage import MovingWindowSupport, Storage

from api.app import create_app
from keystore import Keystore, Settings
from tests.conftest import secret_for

TOKEN = f"test-token-{uuid.uuid4().hex}"
OTHER_TOKEN = f"other-token-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY_FIELDS = {
    "id",
    "name",
    "provider",
    "masked",
    "fingerprint",
    "priority",
    "max_concurrency",
    "enabled",
    "group",
    "state",
    "active_leases",
    "cooling_until",
    "cooling_reason",
    "utilization",
    "last_used_at",
    "uses",
    "rate_limit_hits",
    "created_at",
}


def api_settings(
    home: Path,
    *,
    tokens: str = TOKEN,
    rate: str = "10000/minute",
    failures: str | None = None,
    max_body_bytes: int = 1_048_576,
) -> Settings:
    return Settings(
        home=home,
        api_token=tokens,
        api_rate_limit=rate,
        api_auth_failure_limit=failures,
        api_max_body_bytes=max_body_bytes,
    )


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(ks: Keystore, tmp_path: Path) -> Iterator[ClientFactory]:
    """make(rate=..., failures=..., tokens=..., max_body_bytes=..., storage=..., clock=...,
    auth=True, client=(host, port)); `failures` (the failed-authentication budget) defaults to
    `rate`, as in the app."""
    opened: list[TestClient] = []

    def make(
        *,
        rate: str = "10000/minute",
        failures: str | None = None,
        tokens: str = TOKEN,
        max_body_bytes: int = 1_048_576,
        storage: Storage | None = None,
        clock: Callable[[], float] | None = None,
        auth: bool = True,
        client: tuple[str, int] = ("testclient", 50000),
    ) -> TestClient:
        app = create_app(
            api_settings(
                tmp_path,
                tokens=tokens,
                rate=rate,
                failures=failures,
                max_body_bytes=max_body_bytes,
            ),
            ks,
            rate_limit_storage=storage,
            rate_limit_clock=clock,
        )
        test_client = TestClient(app, headers=AUTH if auth else None, client=client)
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield make
    for test_client in opened:
        test_client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@contextmanager
def serve(app: FastAPI) -> Iterator[int]:
    """Serve `app` with uvicorn (h11, one process) on a free loopback port in a thread; yields the
    port once the server listens, and stops it on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


class ManualClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ManualWindowStorage(Storage, MovingWindowSupport):
    """The moving-window part of `limits.storage.MemoryStorage`, on an injected clock."""

    STORAGE_SCHEME = ["keyrelay-test-manual"]

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.events: dict[str, list[float]] = {}  # acquisition times, oldest first

    @property
    def base_exceptions(self) -> type[Exception]:
        return RuntimeError

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = self.clock()
        live = self._live(key, expiry, now)
        if len(live) + amount > limit:
            return False
        live.extend([now] * amount)
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self.clock()
        live = self._live(key, expiry, now)
        return (live[0], len(live)) if live else (now, 0)

    def _live(self, key: str, expiry: int, now: float) -> list[float]:
        events = self.events.setdefault(key, [])
        del events[: bisect.bisect_right(events, now - expiry)]
        return events

    def reset(self) -> int | None:
        count = len(self.events)
        self.events.clear()
        return count

    def check(self) -> bool:
        return True

    def clear(self, key: str) -> None:
        self.events.pop(key, None)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("moving window only")

    def get(self, key: str) -> int:
        raise NotImplementedError("moving window only")

    def get_expiry(self, key: str) -> float:
        raise NotImplementedError("moving window only")


def add_key(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "k", "provider": "anthropic", "secret": secret_for("api"), **fields}
    response = client.post("/keys", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())
