"""Bearer tokens, checked before routing (api/auth.py, AccessGate), and the per-client budget of
failed authentications, which never locks a valid token out. The request limit itself is in
test_api_limits.py."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import httpx
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


WRONG = {"Authorization": "Bearer guess"}


def assert_401(response_status: int, headers: dict[str, str], body: object) -> None:
    assert response_status == 401
    assert headers.get("www-authenticate") == "Bearer"
    assert body == {"detail": "missing or invalid bearer token"}


def assert_refused_for_failures(response: httpx.Response, *, within_s: int = 60) -> None:
    assert response.status_code == 429
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= within_s
    assert response.json() == {
        "detail": f"too many failed authentication attempts; retry in {retry_after} s"
    }
    assert "www-authenticate" not in response.headers


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


def test_unknown_paths_need_the_token_too(make_client: ClientFactory) -> None:
    anonymous = make_client(auth=False)
    for method, path in (("GET", "/nope"), ("PUT", "/keys"), ("GET", "/keys/abc")):
        response = anonymous.request(method, path)
        assert_401(response.status_code, dict(response.headers), response.json())
    client = make_client()
    assert client.get("/nope").status_code == 404
    assert client.put("/keys").status_code == 405


def test_failed_authentication_has_its_own_budget(make_client: ClientFactory) -> None:
    client = make_client(rate="4/minute", failures="3/minute", auth=False)
    for headers in (WRONG, {}, {"Authorization": f"Basic {TOKEN}"}):  # wrong, missing, not Bearer
        response = client.get("/keys", headers=headers)
        assert_401(response.status_code, dict(response.headers), response.json())

    for method, path in (("GET", "/keys"), ("GET", "/audit"), ("POST", "/keys"), ("GET", "/x")):
        assert_refused_for_failures(client.request(method, path, headers=WRONG))
    assert_refused_for_failures(client.get("/keys/status"))  # no token at all

    # The failures were not charged to the request budget: a valid token has all four requests.
    assert [client.get("/keys", headers=AUTH).status_code for _ in range(5)] == [200] * 4 + [429]
    assert client.get("/keys", headers=AUTH).json()["detail"].startswith("rate limit exceeded")


def test_a_valid_token_keeps_working_while_its_address_is_refused(
    make_client: ClientFactory,
) -> None:
    client = make_client(failures="10/minute", auth=False)
    statuses = []
    for _ in range(30):  # a guesser and the token's owner share the address
        statuses.append(client.get("/keys", headers=WRONG).status_code)
        assert client.get("/keys", headers=AUTH).status_code == 200
        assert client.get("/audit", headers=AUTH).status_code == 200
    assert statuses == [401] * 10 + [429] * 20


def test_the_failure_budget_recovers_with_the_moving_window(make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = make_client(
        failures="2/minute", storage=ManualWindowStorage(clock), clock=clock, auth=False
    )
    assert [client.get("/keys", headers=WRONG).status_code for _ in range(2)] == [401, 401]
    clock.advance(45)
    refused = client.get("/keys", headers=WRONG)
    assert_refused_for_failures(refused)
    assert refused.headers["retry-after"] == "15"
    clock.advance(15)
    assert [client.get("/keys", headers=WRONG).status_code for _ in range(3)] == [401, 401, 429]


def test_the_failure_budget_is_per_client(make_client: ClientFactory) -> None:
    guesser = make_client(failures="1/minute", auth=False, client=("10.0.0.1", 1000))
    neighbour = TestClient(cast(FastAPI, guesser.app), client=("10.0.0.2", 1000))
    assert guesser.get("/keys", headers=WRONG).status_code == 401
    assert guesser.get("/keys", headers=WRONG).status_code == 429
    assert neighbour.get("/keys", headers=WRONG).status_code == 401


def test_the_failure_budget_defaults_to_the_request_limit(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(rate="2/minute", auth=False)
    assert [client.get("/keys", headers=WRONG).status_code for _ in range(3)] == [401, 401, 429]
    monkeypatch.delenv("KEYRELAY_API_AUTH_FAILURE_LIMIT", raising=False)
    monkeypatch.delenv("KEYRELAY_API_RATE_LIMIT", raising=False)
    assert Settings().api_auth_failure_limit is None
    assert Settings(api_rate_limit="7/second").resolved_api_auth_failure_limit == "7/second"
    assert Settings(api_auth_failure_limit="").resolved_api_auth_failure_limit == "10/minute"


def test_bad_failure_budget_setting_refuses_to_start(ks: Keystore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEYRELAY_API_AUTH_FAILURE_LIMIT 'often'"):
        create_app(api_settings(tmp_path, failures="often"), ks)
