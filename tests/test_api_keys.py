"""The HTTP contract (DESIGN.md "HTTP API"): every route and status code, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi.testclient import TestClient

from keystore import Keystore, ManualClock, RateLimitSignal
from tests.conftest import secret_for
from tests.test_api_support import KEY_FIELDS, add_key, client, make_client

__all__ = ["client", "make_client"]  # fixtures


def utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0), text
    return parsed


def cool(ks: Keystore, clock: ManualClock, key_id: int, seconds: float = 3600) -> datetime:
    resets_at = clock.now + timedelta(seconds=seconds)
    ks.mark_limited(
        key_id,
        RateLimitSignal(kind="rate_limit", resets_at=resets_at, retryable=True, source="test"),
    )
    return resets_at


def test_healthz_needs_no_token(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_add_key_returns_201_with_the_public_shape(client: TestClient) -> None:
    key = add_key(
        client, name="team-a", provider="openai", priority=5, max_concurrency=3, group="org"
    )

    assert set(key) == KEY_FIELDS
    assert isinstance(key["id"], int)
    assert key["name"] == "team-a"
    assert key["provider"] == "openai"
    assert (key["priority"], key["max_concurrency"], key["group"]) == (5, 3, "org")
    assert key["enabled"] is True
    assert key["state"] == "available"
    assert key["active_leases"] == 0
    assert len(key["fingerprint"]) == 16
    assert utc(key["created_at"])
    assert client.get(f"/keys/{key['id']}").json() == key


def test_add_key_defaults(client: TestClient) -> None:
    key = add_key(client)
    assert (key["priority"], key["max_concurrency"], key["enabled"], key["group"]) == (
        100,
        1,
        True,
        None,
    )


def test_add_disabled_key(client: TestClient) -> None:
    assert add_key(client, enabled=False)["state"] == "disabled"


def test_same_secret_twice_is_409(client: TestClient) -> None:
    secret = secret_for("dup")
    add_key(client, secret=secret)
    response = client.post("/keys", json={"name": "again", "provider": "openai", "secret": secret})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_invalid_or_unknown_fields_are_422(client: TestClient) -> None:
    good = {"name": "n", "provider": "anthropic", "secret": secret_for("x")}
    for body in (
        {**good, "color": "blue"},
        {**good, "provider": "gemini"},
        {**good, "max_concurrency": 0},
        {**good, "priority": "high"},
        {**good, "name": ""},
        {**good, "name": "two\nlines"},
        {k: v for k, v in good.items() if k != "secret"},
        {**good, "secret": ""},
        {**good, "group": None, "enabled": "sometimes"},
    ):
        response = client.post("/keys", json=body)
        assert response.status_code == 422, body
        assert isinstance(response.json()["detail"], list)
    assert client.get("/keys").json() == []


def test_list_is_ordered_by_provider_priority_id_and_filters(client: TestClient) -> None:
    a1 = add_key(client, provider="openai", priority=10)
    b1 = add_key(client, provider="anthropic", priority=50)
    b2 = add_key(client, provider="anthropic", priority=10)
    c1 = add_key(client, provider="claude-code", priority=1)
    b3 = add_key(client, provider="anthropic", priority=10)

    listed = client.get("/keys").json()
    assert [k["id"] for k in listed] == [b2["id"], b3["id"], b1["id"], c1["id"], a1["id"]]
    assert all(set(k) == KEY_FIELDS for k in listed)

    anthropic = client.get("/keys", params={"provider": "anthropic"}).json()
    assert [k["id"] for k in anthropic] == [b2["id"], b3["id"], b1["id"]]
    assert client.get("/keys", params={"provider": "gemini"}).status_code == 422


def test_status_counts_states_and_earliest_reset(
    client: TestClient, ks: Keystore, clock: ManualClock
) -> None:
    a = add_key(client, provider="anthropic")
    b = add_key(client, provider="anthropic")
    add_key(client, provider="anthropic", enabled=False)
    add_key(client, provider="openai")
    resets_at = cool(ks, clock, b["id"])
    assert a["id"] != b["id"]

    body = client.get("/keys/status").json()

    assert set(body) == {"providers", "keys"}
    assert set(body["providers"]) == {"claude-code", "anthropic", "openai"}
    anthropic = body["providers"]["anthropic"]
    assert anthropic == {
        "total": 3,
        "available": 1,
        "busy": 0,
        "cooling": 1,
        "disabled": 1,
        "earliest_reset": anthropic["earliest_reset"],
    }
    assert utc(anthropic["earliest_reset"]) == resets_at
    assert body["providers"]["openai"]["available"] == 1
    assert body["providers"]["claude-code"]["total"] == 0
    assert body["providers"]["openai"]["earliest_reset"] is None
    assert len(body["keys"]) == 4


def test_explain_names_the_chosen_key_and_why_not_the_others(
    client: TestClient, ks: Keystore, clock: ManualClock
) -> None:
    first = add_key(client, provider="openai", priority=1)
    second = add_key(client, provider="openai", priority=2)
    cool(ks, clock, first["id"])

    body = client.get("/keys/explain", params={"provider": "openai"}).json()

    assert body["chosen"] == second["id"]
    by_id = {c["id"]: c for c in body["candidates"]}
    assert set(by_id) == {first["id"], second["id"]}
    assert by_id[second["id"]]["eligible"] is True
    assert by_id[first["id"]]["eligible"] is False
    assert "cool" in by_id[first["id"]]["reason"]
    assert all(set(c) == {"id", "eligible", "reason"} for c in body["candidates"])

    empty = client.get("/keys/explain", params={"provider": "claude-code"}).json()
    assert empty == {"chosen": None, "candidates": []}


def test_explain_rejects_unknown_or_missing_provider(client: TestClient) -> None:
    assert client.get("/keys/explain", params={"provider": "gemini"}).status_code == 422
    assert client.get("/keys/explain").status_code == 422


def test_config_reads_defaults_and_patches_some_fields(client: TestClient) -> None:
    assert client.get("/keys/config").json() == {
        "auto_wait": True,
        "max_wait_s": 28800,
        "inline_wait_max_s": 30,
        "fallback_enabled": False,
        "fallback_provider": "openai",
        "lease_ttl_s": 300,
        "no_reset_cooldown_s": 60,
        "proactive_threshold": 0.95,
        "resume_stagger_s": 1.0,
        "sandbox": "auto",  # the agent-jobs and relay issues add these two
        "workdir_snapshot_max_mb": 64,
    }

    response = client.patch("/keys/config", json={"max_wait_s": 600, "auto_wait": False})

    assert response.status_code == 200
    assert response.json()["max_wait_s"] == 600
    assert response.json()["auto_wait"] is False
    assert response.json()["lease_ttl_s"] == 300
    assert client.get("/keys/config").json() == response.json()


def test_config_patch_refuses_unknown_fields_and_bad_values(client: TestClient) -> None:
    before = client.get("/keys/config").json()
    for body in (
        {"max_wait": 5},
        {"max_wait_s": -1},
        {"proactive_threshold": 1.5},
        {"lease_ttl_s": 1},
        {"auto_wait": "maybe"},
        {"fallback_provider": "gemini"},
        {"auto_wait": None},
        {"max_wait_s": 600, "surprise": True},
    ):
        response = client.patch("/keys/config", json=body)
        assert response.status_code == 422, body
    assert client.get("/keys/config").json() == before


def test_get_key_404_for_any_id_that_names_no_key(client: TestClient) -> None:
    assert client.get("/keys/12345").status_code == 404
    assert client.get("/keys/12345").json() == {"detail": "no key with id 12345"}
    for missing in ("0", "-3", str(10**30), "abc", "1.5", "1e3"):
        response = client.get(f"/keys/{missing}")
        assert response.status_code == 404, missing
        assert set(response.json()) == {"detail"}


def test_static_routes_are_not_captured_by_the_id_route(client: TestClient) -> None:
    add_key(client)
    assert set(client.get("/keys/status").json()) == {"providers", "keys"}
    assert "auto_wait" in client.get("/keys/config").json()
    explained = client.get("/keys/explain", params={"provider": "anthropic"}).json()
    assert set(explained) == {"chosen", "candidates"}
    assert client.patch("/keys/config", json={"max_wait_s": 60}).json()["max_wait_s"] == 60
    # /keys/{id} takes integers only, so a method a static path does not serve is a 405.
    for method, path in (("DELETE", "/keys/status"), ("PATCH", "/keys/explain")):
        response = client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert set(response.json()) == {"detail"}
    assert client.post("/keys/config/reset").status_code == 404


def test_patch_key_changes_only_the_fields_sent(client: TestClient) -> None:
    key = add_key(client, name="old", priority=7, group="g")
    add_key(client)  # another enabled anthropic key, so disabling is allowed

    response = client.patch(
        f"/keys/{key['id']}", json={"name": "new", "max_concurrency": 4, "enabled": False}
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["max_concurrency"], body["enabled"]) == ("new", 4, False)
    assert (body["priority"], body["group"], body["state"]) == (7, "g", "disabled")
    assert client.patch(f"/keys/{key['id']}", json={"group": None}).json()["group"] is None
    assert client.patch(f"/keys/{key['id']}", json={}).json()["name"] == "new"


def test_patch_secret_changes_fingerprint_and_masked(client: TestClient) -> None:
    key = add_key(client)
    new_secret = secret_for("rotated")

    body = client.patch(f"/keys/{key['id']}", json={"secret": new_secret}).json()

    assert body["fingerprint"] != key["fingerprint"]
    assert body["masked"].endswith(new_secret[-4:])


def test_patch_key_errors(client: TestClient) -> None:
    only = add_key(client, provider="openai")
    other = add_key(client, provider="anthropic")

    assert client.patch("/keys/999", json={"name": "x"}).status_code == 404
    for body in ({"name": None}, {"priority": None}, {"enabled": None}, {"colour": "red"}):
        assert client.patch(f"/keys/{only['id']}", json=body).status_code == 422, body

    last = client.patch(f"/keys/{only['id']}", json={"enabled": False})
    assert last.status_code == 409
    assert "last enabled openai key" in last.json()["detail"]
    assert client.get(f"/keys/{only['id']}").json()["enabled"] is True

    stolen = client.patch(f"/keys/{other['id']}", json={"secret": "sk-" + "x" * 40})
    assert stolen.status_code == 200
    duplicate = client.patch(f"/keys/{only['id']}", json={"secret": "sk-" + "x" * 40})
    assert duplicate.status_code == 409


def test_delete_key(client: TestClient) -> None:
    first = add_key(client, provider="openai")
    second = add_key(client, provider="openai")
    disabled = add_key(client, provider="openai", enabled=False)

    response = client.delete(f"/keys/{first['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"/keys/{first['id']}").status_code == 404
    assert client.delete(f"/keys/{first['id']}").status_code == 404

    last = client.delete(f"/keys/{second['id']}")
    assert last.status_code == 409
    assert "last enabled" in last.json()["detail"]
    assert client.delete(f"/keys/{disabled['id']}").status_code == 204
    assert [k["id"] for k in client.get("/keys").json()] == [second["id"]]


def test_reset_clears_cooling_and_is_audited(
    client: TestClient, ks: Keystore, clock: ManualClock
) -> None:
    key = add_key(client)
    cool(ks, clock, key["id"])
    assert client.get(f"/keys/{key['id']}").json()["state"] == "cooling"

    response = client.post(f"/keys/{key['id']}/reset")

    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["cooling_until"], body["cooling_reason"]) == (
        "available",
        None,
        None,
    )
    latest = client.get("/audit", params={"limit": 1}).json()[0]
    assert (latest["type"], latest["key_id"]) == ("key_reset", key["id"])
    assert client.post("/keys/4242/reset").status_code == 404


def test_audit_newest_first_with_filters(client: TestClient, ks: Keystore) -> None:
    a = add_key(client)
    b = add_key(client)
    client.patch(f"/keys/{a['id']}", json={"name": "renamed"})
    ks.record("pool_waiting", run_id="run-1", provider="anthropic")

    events = client.get("/audit").json()
    assert [e["type"] for e in events] == ["pool_waiting", "key_updated", "key_added", "key_added"]
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
    assert all(set(e) == {"id", "at", "type", "key_id", "run_id", "details"} for e in events)
    assert all(utc(e["at"]) for e in events)

    assert [e["type"] for e in client.get("/audit", params={"key_id": a["id"]}).json()] == [
        "key_updated",
        "key_added",
    ]
    assert [e["key_id"] for e in client.get("/audit", params={"type": "key_added"}).json()] == [
        b["id"],
        a["id"],
    ]
    by_run = client.get("/audit", params={"run_id": "run-1"}).json()
    assert [(e["type"], e["run_id"]) for e in by_run] == [("pool_waiting", "run-1")]
    assert len(client.get("/audit", params={"limit": 2}).json()) == 2
    assert client.get("/audit", params={"type": "no_such_type"}).json() == []


def test_audit_limit_bounds(client: TestClient) -> None:
    for limit in (0, -1, 10_001, "many"):
        assert client.get("/audit", params={"limit": limit}).status_code == 422, limit
    assert client.get("/audit", params={"limit": 10_000}).status_code == 200


def test_errors_are_json_detail(client: TestClient) -> None:
    for response in (
        client.get("/keys/999"),
        client.post("/keys", json={}),
        client.get("/keys", headers={"Authorization": "Bearer nope"}),
    ):
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"detail"}


def test_times_are_iso_8601_utc(client: TestClient, ks: Keystore, clock: ManualClock) -> None:
    key = add_key(client)
    cool(ks, clock, key["id"], seconds=90)
    body = client.get(f"/keys/{key['id']}").json()
    assert utc(body["cooling_until"]) == clock.now + timedelta(seconds=90)
    assert utc(body["created_at"]) == clock.now
    assert body["cooling_until"].endswith(("Z", "+00:00"))
