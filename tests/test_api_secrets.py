"""Secrets are write-only: masked in KeyPublic, never in a response body (422s included) or a log
line."""

from __future__ import annotations

import logging
import string

import pytest
from fastapi.testclient import TestClient

from tests.conftest import secret_for
from tests.test_api_support import add_key, client, make_client

__all__ = ["client", "make_client"]  # fixtures


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 11, 12, 20, 33, 34, 40, 108])
def test_masked_shows_at_most_first_7_and_last_4_and_a_third(
    client: TestClient, length: int
) -> None:
    secret = "".join(string.ascii_letters[i % 52] for i in range(length))
    key = add_key(client, secret=secret)

    masked = key["masked"]
    head, sep, tail = masked.partition("...")
    assert sep == "..."
    assert len(head) + len(tail) <= length // 3
    assert len(head) <= 7 and len(tail) <= 4
    assert secret.startswith(head) and secret.endswith(tail)
    if length >= 33:  # room for the full 7 + 4
        assert (head, tail) == (secret[:7], secret[-4:])


def test_no_response_or_log_line_carries_a_secret(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [secret_for(f"s{i}") for i in range(4)]
    responses = []

    first = client.post("/keys", json={"name": "a", "provider": "openai", "secret": secrets[0]})
    responses.append(first)
    key_id = first.json()["id"]
    responses += [
        client.post("/keys", json={"name": "b", "provider": "openai", "secret": secrets[1]}),
        client.post("/keys", json={"name": "dup", "provider": "openai", "secret": secrets[0]}),
        client.patch(f"/keys/{key_id}", json={"secret": secrets[2]}),
        client.patch(f"/keys/{key_id}", json={"secret": secrets[1]}),  # 409: belongs to b
        client.get("/keys"),
        client.get(f"/keys/{key_id}"),
        client.get("/keys/status"),
        client.get("/keys/explain", params={"provider": "openai"}),
        client.post(f"/keys/{key_id}/reset"),
        client.get("/audit", params={"limit": 1000}),
        client.get("/openapi.json"),
    ]
    assert [r.status_code for r in responses[:5]] == [201, 201, 409, 200, 409]
    for response in responses:
        for secret in secrets:
            assert secret not in response.text
            assert secret[:20] not in response.text
    for secret in secrets:
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        {"name": "n", "provider": "gemini", "secret": "{secret}"},
        {"name": "n", "provider": "openai", "secret": " {secret}"},
        {"name": "n", "provider": "openai", "secret": "{secret}\n"},
        {"name": "n", "provider": "openai", "secret": "{secret}", "extra": 1},
        {"name": "", "provider": "openai", "secret": "{secret}"},
        {"name": "n", "provider": "openai", "secrett": "{secret}"},  # misspelt: an unknown field
        {"name": "n", "provider": "openai", "secret": "{secret}" * 200},  # too long
        {"name": "n", "provider": "openai", "secret": ["{secret}"]},
        {"name": "n", "provider": "openai", "secret": {"value": "{secret}"}},
        "{secret}",
        ["{secret}"],
    ],
)
def test_422_bodies_never_echo_the_secret(
    client: TestClient, caplog: pytest.LogCaptureFixture, body: object
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = secret_for("leak")
    filled = _fill(body, secret)

    for response in (
        client.post("/keys", json=filled),
        client.patch("/keys/1", json=filled),
        client.patch("/keys/config", json=filled),
    ):
        assert response.status_code == 422, response.text
        assert secret not in response.text
        assert secret[:20] not in response.text
        for problem in response.json()["detail"]:
            assert set(problem) == {"loc", "msg", "type"}
    assert secret not in caplog.text


def test_invalid_json_body_is_422_without_echo(client: TestClient) -> None:
    secret = secret_for("raw")
    response = client.post(
        "/keys",
        content=f'{{"name": "n", "provider": "openai", "secret": "{secret}"'.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert secret not in response.text


def _fill(template: object, secret: str) -> object:
    if isinstance(template, str):
        return template.replace("{secret}", secret)
    if isinstance(template, list):
        return [_fill(item, secret) for item in template]
    if isinstance(template, dict):
        return {k: _fill(v, secret) for k, v in template.items()}
    return template
