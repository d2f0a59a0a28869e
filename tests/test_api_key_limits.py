"""What the providers said about each key's limits, over the API and the CLI's store: the
`reserve` of a shared subscription, `GET /keys/limits`, and `explain` for a request size."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from keystore import Keystore
from tests.conftest import T0
from tests.test_api_support import add_key, client, make_client

__all__ = ["client", "make_client"]  # fixtures


def _report(ks: Keystore, key_id: int, *, remaining: int, reset_s: float) -> None:
    reset = (T0 + timedelta(seconds=reset_s)).isoformat().replace("+00:00", "Z")
    ks.record_response(
        key_id,
        provider="anthropic",
        status=200,
        headers={
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": str(remaining),
            "anthropic-ratelimit-input-tokens-reset": reset,
        },
        received_at=T0 - timedelta(milliseconds=1),
    )


def test_limits_route_lists_each_keys_buckets_until_their_reset(
    client: TestClient, ks: Keystore
) -> None:
    key = add_key(client, name="a", provider="anthropic")["id"]
    assert client.get("/keys/limits").json() == []
    _report(ks, key, remaining=1500, reset_s=60)
    (bucket,) = client.get("/keys/limits", params={"provider": "anthropic"}).json()
    assert bucket["key_id"] == key and bucket["bucket"] == "input-tokens"
    assert (bucket["limit"], bucket["remaining"]) == (40000, 1500)
    assert bucket["utilization"] == (40000 - 1500) / 40000
    assert bucket["reset_at"].startswith("2026-01-01T00:01:00")
    assert client.get("/keys/limits", params={"provider": "openai"}).json() == []
    assert client.get("/keys/limits", params={"provider": "nope"}).status_code == 422


def test_explain_takes_the_request_size(client: TestClient, ks: Keystore) -> None:
    small = add_key(client, name="small", provider="anthropic", priority=1)["id"]
    big = add_key(client, name="big", provider="anthropic", priority=2)["id"]
    _report(ks, small, remaining=1500, reset_s=60)
    _report(ks, big, remaining=30000, reset_s=60)
    assert client.get("/keys/explain?provider=anthropic").json()["chosen"] == small
    explained = client.get("/keys/explain?provider=anthropic&input_tokens=2000").json()
    assert explained["chosen"] == big
    reasons = {c["id"]: c["reason"] for c in explained["candidates"]}
    assert "input-tokens 1500 left, 0 reserved, 2000 needed" in reasons[small]
    assert client.get("/keys/explain?provider=anthropic&input_tokens=-1").status_code == 422


def test_a_reserve_is_set_and_changed_with_the_key(client: TestClient) -> None:
    created = client.post(
        "/keys",
        json={
            "name": "shared",
            "provider": "claude-code",
            "secret": "sk-ant-oat01-" + "s" * 40,
            "reserve": 0.25,
        },
    )
    assert created.status_code == 201, created.text
    key = created.json()["id"]
    assert client.patch(f"/keys/{key}", json={"reserve": 0.5}).status_code == 200
    assert client.patch(f"/keys/{key}", json={"reserve": 0.95}).status_code == 422
    assert client.patch(f"/keys/{key}", json={"reserve": None}).status_code == 422
