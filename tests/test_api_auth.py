"""Bearer tokens and the per-client rate limit on /keys."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from keystore import ConfigError, Keystore, Settings
from tests.test_api_support import (
    AUTH,
    OTHER_TOKEN,
    TOKEN,
    ClientFactory,
    ManualClock,
    ManualWindowStorage,
    api_settings,
    make_client,
)

__all__ = ["make_client"]  # fixture

# Every route of the contract but /healthz, with a request that would otherwise succeed or fail
# validation; none may be reached without the token.
PROTECTED = [
    ("GET", "/keys"),
    ("POST", "/keys"),
    ("GET", "/keys/status"),
    ("GET", "/keys/explain?provider=openai"),
    ("GET", "/keys/config"),
    ("PATCH", "/keys/config"),
    ("GET", "/keys/1"),
    ("PATCH", "/keys/1"),
    ("DELETE", "/keys/1"),
    ("POST", "/keys/1/reset"),
    ("GET", "/audit"),
]


def assert_401(response_status: int, headers: dict[str, str], body: object) -> None:
    assert response_status == 401
    assert headers.get("www-authenticate") == "Bearer"
    assert body == {"detail": "missing or invalid bearer token"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_but_healthz_needs_the_token(
    make_client: ClientFactory, method: str, path: str
) -> None:
    anonymous = make_client(auth=False)
    for value in (
        None,
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer ",
        "Bearer clé-non-ascii",
    ):
        headers = {b"Authorization": value.encode()} if value is not None else {}
        response = anonymous.request(method, path, headers=headers, json={})
        assert_401(response.status_code, dict(response.headers), response.json())


def test_the_right_token_and_every_configured_token_are_accepted(
    make_client: ClientFactory,
) -> None:
    client = make_client(auth=False, tokens=f" {TOKEN} , {OTHER_TOKEN},")
    for token in (TOKEN, OTHER_TOKEN):
        response = client.get("/keys", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, token
    assert client.get("/keys", headers={"Authorization": "Bearer ,"}).status_code == 401


def test_openapi_declares_the_bearer_scheme(make_client: ClientFactory) -> None:
    schema = make_client().get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from KEYRELAY_API_TOKEN",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("description"), (method, path)  # the route's docstring
            if path == "/healthz":
                assert "security" not in operation
            else:
                assert operation["security"] == [{"bearer": []}], (method, path)
                assert "401" in operation["responses"], (method, path)


@pytest.mark.parametrize("tokens", [None, "", " , ,"])
def test_no_token_configured_refuses_to_start(
    ks: Keystore, tmp_path: Path, tokens: str | None
) -> None:
    settings = Settings(home=tmp_path, api_token=tokens)
    with pytest.raises(ConfigError, match="KEYRELAY_API_TOKEN is not set"):
        create_app(settings, ks)


def test_bad_rate_limit_setting_refuses_to_start(ks: Keystore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEYRELAY_API_RATE_LIMIT"):
        create_app(api_settings(tmp_path, rate="lots"), ks)


def test_over_the_limit_is_429_with_retry_after(make_client: ClientFactory) -> None:
    client = make_client(rate="3/minute")
    assert [client.get("/keys").status_code for _ in range(3)] == [200, 200, 200]

    response = client.get("/keys/status")

    assert response.status_code == 429
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert set(response.json()) == {"detail"}


def test_failed_authentication_counts_against_the_limit(make_client: ClientFactory) -> None:
    client = make_client(rate="3/minute", auth=False)
    for _ in range(3):
        assert client.get("/keys", headers={"Authorization": "Bearer guess"}).status_code == 401

    assert client.get("/keys", headers=AUTH).status_code == 429
    assert client.get("/keys", headers={"Authorization": "Bearer guess"}).status_code == 429


def test_invalid_requests_count_too_and_other_routes_are_not_limited(
    make_client: ClientFactory,
) -> None:
    client = make_client(rate="2/minute")
    assert client.get("/keys/0").status_code == 404
    assert client.post("/keys", json={}).status_code == 422
    assert client.get("/keys/config").status_code == 429
    assert client.patch("/keys/config", json={}).status_code == 429
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
        assert client.get("/audit").status_code == 200


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


def test_resetting_the_limit_storage_lets_clients_in_again(make_client: ClientFactory) -> None:
    client = make_client(rate="1/minute")
    assert client.get("/keys").status_code == 200
    assert client.get("/keys").status_code == 429
    app = cast(FastAPI, client.app)
    app.state.rate_limit.reset()
    assert client.get("/keys").status_code == 200


def test_tokens_are_never_shown(ks: Keystore, tmp_path: Path) -> None:
    app = create_app(api_settings(tmp_path), ks)
    assert TOKEN not in repr(app.state.tokens)
    with TestClient(app, headers=AUTH) as client:
        document = client.get("/openapi.json")
        assert document.status_code == 200
        assert TOKEN not in document.text


def test_documentation_is_public_and_holds_no_data(make_client: ClientFactory) -> None:
    anonymous = make_client(auth=False)
    document = anonymous.get("/openapi.json")
    assert document.status_code == 200
    assert set(document.json()["paths"]) >= {"/healthz", "/keys", "/keys/{id}", "/audit"}
    assert TOKEN not in document.text
    assert anonymous.get("/docs").status_code == 200
    assert anonymous.get("/keys").status_code == 401
