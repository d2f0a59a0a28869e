"""Errors map to status codes in one place (api/errors.py); unexpected ones become a generic 500
whose log line names the exception class, never its text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from keystore import KeyPublic, Keystore, MasterKeyError
from tests.test_api_support import AUTH, api_settings, client, make_client

__all__ = ["client", "make_client"]  # fixtures

LEAKY = "sk-ant-api03-must-not-leak-0123456789"


class BrokenKeystore(Keystore):
    """A real keystore whose listing fails the way a bug or a bad master key would."""

    failure: Exception = RuntimeError(f"bug while handling {LEAKY}")

    def list_keys(self, provider: str | None = None) -> list[KeyPublic]:
        raise self.failure


@pytest.fixture
def broken_client(ks: Keystore, tmp_path: Path) -> TestClient:
    broken = BrokenKeystore(ks.engine, ks.master)
    return TestClient(create_app(api_settings(tmp_path), broken), headers=AUTH)


@pytest.mark.parametrize(
    "failure",
    [RuntimeError(f"bug while handling {LEAKY}"), MasterKeyError(f"cannot decrypt {LEAKY}")],
    ids=["unexpected", "unmapped-keyrelay-error"],
)
def test_unexpected_errors_are_a_generic_500(
    broken_client: TestClient, caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    caplog.set_level(logging.DEBUG)
    BrokenKeystore.failure = failure

    response = broken_client.get("/keys")

    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; see the server log"}
    assert type(failure).__name__ in caplog.text
    assert "GET /keys" in caplog.text
    assert LEAKY not in caplog.text


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    for path, allowed in (
        ("/keys", "GET, POST"),
        ("/keys/config", "GET, PATCH"),
        ("/keys/7", "DELETE, GET, PATCH"),
        ("/keys/7/reset", "POST"),
    ):
        response = client.put(path, json={})
        assert response.status_code == 405, path
        assert response.headers["allow"] == allowed
        assert response.json() == {"detail": "Method Not Allowed"}


def test_unreadable_and_malformed_bodies(client: TestClient) -> None:
    json_type = {"Content-Type": "application/json"}
    unreadable = client.post("/keys", content=b"N\xff", headers=json_type)
    assert unreadable.status_code == 400
    assert unreadable.json() == {"detail": "There was an error parsing the body"}
    malformed = client.post("/keys", content=b'{"name":', headers=json_type)
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["type"] == "json_invalid"


def test_strict_types_in_bodies(client: TestClient) -> None:
    base = {"name": "n", "provider": "openai", "secret": "sk-strict-0123456789abcdef"}
    for field, value in (("priority", "5"), ("priority", True), ("max_concurrency", 1.5)):
        response = client.post("/keys", json={**base, field: value})
        assert response.status_code == 422, (field, value)
    assert client.post("/keys", json={**base, "priority": 5.0}).json()["priority"] == 5
    assert client.patch("/keys/config", json={"max_wait_s": False}).status_code == 422
    assert client.patch("/keys/config", json={"max_wait_s": 10}).json()["max_wait_s"] == 10
