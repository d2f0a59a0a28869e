"""Who holds the leases: `Keystore.active_leases` and `GET /keys/leases`, on SQLite and
PostgreSQL (the pool page shows these; so can any API client)."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi.testclient import TestClient

from keystore import Keystore, ManualClock
from tests.test_api_support import ClientFactory, add_key, client, make_client

__all__ = ["client", "make_client"]  # fixtures


def test_active_leases_name_key_and_holder_and_forget_released_and_expired(
    ks: Keystore, clock: ManualClock
) -> None:
    a = ks.add_key(name="a", provider="anthropic", secret="sk-ant-aaaa-0001", max_concurrency=2)
    b = ks.add_key(name="b", provider="openai", secret="sk-openai-bbbb-0002")
    run = uuid.uuid4()
    first = ks.acquire(provider="anthropic", holder=f"flow-run {run} turn 1", ttl_s=60)
    clock.advance(1)
    second = ks.acquire(provider="anthropic", holder="my-job", ttl_s=10)
    other = ks.acquire(provider="openai", holder="nightly", ttl_s=60)

    held = ks.active_leases()

    assert [(h.key_id, h.holder) for h in held] == [
        (a.id, f"flow-run {run} turn 1"),
        (a.id, "my-job"),
        (b.id, "nightly"),
    ]
    assert held[0].key_name == "a" and held[0].provider == "anthropic"
    assert held[0].acquired_at == first.acquired_at
    assert held[0].expires_at == first.expires_at
    assert [h.holder for h in ks.active_leases("openai")] == ["nightly"]

    ks.release(other)
    clock.advance(10)  # `second` has expired unreleased: no longer active, though not reclaimed
    assert [h.holder for h in ks.active_leases()] == [f"flow-run {run} turn 1"]
    assert ks.get_key(a.id).active_leases == 1  # the same count KeyPublic shows
    ks.release(first)
    ks.release(second)
    assert ks.active_leases() == []


def test_leases_route_lists_holders_without_secrets(
    client: TestClient, ks: Keystore, clock: ManualClock
) -> None:
    secret = "sk-ant-api03-route-secret-0123456789"
    key = add_key(client, name="team-a", provider="anthropic", secret=secret)
    add_key(client, name="spare", provider="openai")
    lease = ks.acquire(provider="anthropic", holder="flow-run 0000 turn 2", ttl_s=30)

    response = client.get("/keys/leases")

    assert response.status_code == 200
    assert secret not in response.text and lease.id not in response.text
    [entry] = response.json()
    assert set(entry) == {"key_id", "key_name", "provider", "holder", "acquired_at", "expires_at"}
    assert (entry["key_id"], entry["key_name"], entry["provider"], entry["holder"]) == (
        key["id"],
        "team-a",
        "anthropic",
        "flow-run 0000 turn 2",
    )
    assert datetime.fromisoformat(entry["expires_at"]) == lease.expires_at
    assert client.get("/keys/leases", params={"provider": "openai"}).json() == []
    assert client.get("/keys/leases", params={"provider": "gemini"}).status_code == 422


def test_leases_route_is_static_authenticated_limited_and_documented(
    make_client: ClientFactory,
) -> None:
    anonymous = make_client(auth=False)
    assert anonymous.get("/keys/leases").status_code == 401
    limited = make_client(rate="2/minute")
    assert [limited.get("/keys/leases").status_code for _ in range(3)] == [200, 200, 429]
    client = make_client()
    assert client.delete("/keys/leases").status_code == 405  # not /keys/{id}
    operation = client.get("/openapi.json").json()["paths"]["/keys/leases"]["get"]
    assert "holder" in operation["description"]
    assert operation["security"] == [{"bearer": []}]
