"""The per-client request limit (KEYRELAY_API_RATE_LIMIT, api/auth.py AccessGate): every route
but /healthz, the documentation on a budget of its own; 429 with an integer Retry-After >= 1."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from keystore import ConfigError, Keystore
from tests.test_api_auth import PROTECTED
from tests.test_api_support import (
    AUTH,
    ClientFactory,
    ManualClock,
    ManualWindowStorage,
    api_settings,
    make_client,
)

__all__ = ["make_client"]  # fixture

DOCUMENTATION = ["/openapi.json", "/docs", "/docs/oauth2-redirect"]


def assert_429(response: httpx.Response, *, within_s: int = 60) -> None:
    assert response.status_code == 429
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= within_s
    assert response.json() == {"detail": f"rate limit exceeded; retry in {retry_after} s"}


def test_bad_rate_limit_setting_refuses_to_start(ks: Keystore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEYRELAY_API_RATE_LIMIT"):
        create_app(api_settings(tmp_path, rate="lots"), ks)


def test_over_the_limit_is_429_with_retry_after(make_client: ClientFactory) -> None:
    client = make_client(rate="3/minute")
    assert [client.get("/keys").status_code for _ in range(3)] == [200, 200, 200]

    assert_429(client.get("/keys/status"))


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_api_route_is_limited(make_client: ClientFactory, method: str, path: str) -> None:
    client = make_client(rate="1/minute")
    assert client.request(method, path, json={}).status_code != 429
    assert_429(client.request(method, path, json={}))


def test_invalid_requests_count_too(make_client: ClientFactory) -> None:
    client = make_client(rate="3/minute")
    assert client.get("/keys/0").status_code == 404
    assert client.post("/keys", json={}).status_code == 422
    assert client.get("/no-such-route").status_code == 404
    assert_429(client.get("/keys/config"))
    assert_429(client.get("/audit"))


@pytest.mark.parametrize("path", DOCUMENTATION)
def test_the_documentation_is_limited_on_its_own_budget(
    make_client: ClientFactory, path: str
) -> None:
    client = make_client(rate="2/minute")
    anonymous = TestClient(cast(FastAPI, client.app), client=("testclient", 50000))
    assert [anonymous.get(path).status_code for _ in range(2)] == [200, 200]
    assert_429(anonymous.get(path))
    assert_429(client.get(path))  # the documentation budget, token or not

    # Anonymous readers did not spend the token's budget, nor it theirs.
    assert [client.get("/keys").status_code for _ in range(3)] == [200, 200, 429]


def test_healthz_is_never_limited_nor_charged(make_client: ClientFactory) -> None:
    client = make_client(rate="1/minute", auth=False)
    for _ in range(30):
        response = client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert client.get("/keys", headers=AUTH).status_code == 200
    assert client.get("/healthz", headers={"Authorization": "Bearer guess"}).status_code == 200


def test_recovery_and_retry_after_follow_the_moving_window(make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = make_client(rate="3/minute", storage=ManualWindowStorage(clock), clock=clock)
    client.get("/keys")
    clock.advance(20)
    client.get("/keys")
    client.get("/keys")
    clock.advance(10)

    refused = client.get("/keys")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"  # the first hit leaves the window at t=60

    clock.advance(29.5)
    assert client.get("/keys").headers["retry-after"] == "1"  # rounded up, never 0
    clock.advance(0.5)
    assert client.get("/keys").status_code == 200
    assert client.get("/keys").status_code == 429
    clock.advance(60)
    assert [client.get("/keys").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_limits_are_per_client_and_per_app(make_client: ClientFactory) -> None:
    first = make_client(rate="1/minute", client=("10.0.0.1", 1000))
    neighbour = make_client(rate="1/minute", client=("10.0.0.2", 1000))
    assert first.get("/keys").status_code == 200
    assert first.get("/keys").status_code == 429
    assert neighbour.get("/keys").status_code == 200  # another IP, and another app

    same_ip_other_app = make_client(rate="1/minute", client=("10.0.0.1", 1000))
    assert same_ip_other_app.get("/keys").status_code == 200

    same_app_other_ip = TestClient(cast(FastAPI, first.app), headers=AUTH, client=("::1", 1))
    assert same_app_other_ip.get("/keys").status_code == 200


def test_the_app_itself_never_reads_forwarded_headers(make_client: ClientFactory) -> None:
    # The client is the scope's address; only the server (uvicorn, for FORWARDED_ALLOW_IPS) may
    # rewrite it from X-Forwarded-For.
    client = make_client(rate="1/minute", failures="1/minute")
    spoofed = [{"X-Forwarded-For": f"10.9.{i}.1", "Forwarded": f"for=10.9.{i}.1"} for i in (1, 2)]
    assert client.get("/keys", headers=spoofed[0]).status_code == 200
    assert client.get("/keys", headers=spoofed[1]).status_code == 429
    guess = {"Authorization": "Bearer guess"}
    assert client.get("/keys", headers=guess | spoofed[0]).status_code == 401
    assert client.get("/keys", headers=guess | spoofed[1]).status_code == 429


def test_resetting_the_limit_storage_lets_clients_in_again(make_client: ClientFactory) -> None:
    client = make_client(rate="1/minute", failures="1/minute")
    assert client.get("/keys").status_code == 200
    assert client.get("/keys").status_code == 429
    assert client.get("/keys", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert client.get("/keys", headers={"Authorization": "Bearer guess"}).status_code == 429
    app = cast(FastAPI, client.app)
    app.state.rate_limit.reset()
    assert client.get("/keys").status_code == 200
    assert client.get("/keys", headers={"Authorization": "Bearer guess"}).status_code == 401
