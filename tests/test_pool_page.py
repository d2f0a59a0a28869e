"""The pool page's server side, without a browser: the login cookie, who is refused, the JSON
state the page polls, its budget, and the actions (on SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from api.ui import PAGE_RATE_LIMIT, PageSessions
from api.ui.state import AUDIT_SHOWN, prefect_ui_base
from keystore import Keystore, ManualClock, RateLimitSignal
from tests.conftest import secret_for
from tests.test_api_support import (
    TOKEN,
    ClientFactory,
    ManualWindowStorage,
    add_key,
    make_client,
)
from tests.test_api_support import ManualClock as WindowClock

__all__ = ["make_client"]  # fixture

SAME_ORIGIN = {"Origin": "http://testserver"}
PAGE_LIMIT = int(PAGE_RATE_LIMIT.split("/")[0])


def browser(make_client: ClientFactory, **kwargs: object) -> TestClient:
    """A client without the bearer header, as a browser is."""
    return make_client(auth=False, **kwargs)


def log_in(client: TestClient, token: str = TOKEN) -> None:
    response = client.post("/ui/login", json={"token": token}, headers=SAME_ORIGIN)
    assert response.status_code == 204, response.text


# -- the page and its assets ----------------------------------------------------------------------


def test_the_page_and_its_assets_need_no_login_and_hold_no_data(
    make_client: ClientFactory, ks: Keystore
) -> None:
    secret = secret_for("page")
    ks.add_key(name="hidden-name", provider="anthropic", secret=secret)
    client = browser(make_client)

    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "ui/"
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "hidden-name" not in page.text and secret not in page.text
    # Everything the page loads is its own (no CDN: it must work offline).
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert loaded and all(url.startswith(("static/", "data:")) for url in loaded), loaded
    # ... and so is every module those scripts import.
    to_fetch = [url for url in loaded if url.startswith("static/")]
    fetched = set()
    while to_fetch:
        url = to_fetch.pop()
        fetched.add(url)
        asset = client.get(f"/ui/{url}")
        assert asset.status_code == 200, url
        imports = re.findall(r'from "\./([\w.-]+)"', asset.text)
        to_fetch += [f"static/{name}" for name in imports if f"static/{name}" not in fetched]
    assert {"static/app.js", "static/dom.js", "static/cells.js", "static/server.js"} <= fetched
    assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/../app.py").status_code in (401, 404)
    assert client.get("/ui/static/keystore.db").status_code == 404


def test_the_page_is_not_in_the_api_document(make_client: ClientFactory) -> None:
    paths = make_client().get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]


# -- login, cookie, refusals ---------------------------------------------------------------------


def test_login_sets_a_scoped_httponly_strict_cookie_that_is_not_the_token(
    make_client: ClientFactory,
) -> None:
    client = browser(make_client)
    response = client.post("/ui/login", json={"token": TOKEN}, headers=SAME_ORIGIN)

    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "Path=/ui;" in cookie + ";" and "SameSite=strict" in cookie
    assert "secure" not in attributes  # plain HTTP here; set when the page is served over HTTPS
    assert TOKEN not in cookie
    assert client.get("/ui/state").status_code == 200


def test_a_wrong_token_is_refused_and_counts_as_a_failed_authentication(
    make_client: ClientFactory,
) -> None:
    client = browser(make_client, failures="2/minute")
    for _ in range(2):
        refused = client.post("/ui/login", json={"token": "guess"}, headers=SAME_ORIGIN)
        assert refused.status_code == 401
        assert "set-cookie" not in refused.headers
    spent = client.post("/ui/login", json={"token": "guess"}, headers=SAME_ORIGIN)
    assert spent.status_code == 429 and int(spent.headers["retry-after"]) >= 1
    # One budget for guesses, whichever door they knock on.
    assert client.get("/keys", headers={"Authorization": "Bearer guess"}).status_code == 429


def test_the_state_needs_the_cookie_and_the_api_does_not_take_it(
    make_client: ClientFactory,
) -> None:
    client = browser(make_client)
    missing = client.get("/ui/state")
    assert missing.status_code == 401
    assert missing.json() == {"detail": "log in with an API token first"}
    # The page's routes take the cookie only; the API takes the header only.
    bearer = client.get("/ui/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 401
    log_in(client)
    session = client.cookies.get("keyrelay_session")
    assert session
    assert client.get("/keys").status_code == 401  # the cookie is not even sent outside /ui
    assert client.get("/keys", headers={"Cookie": f"keyrelay_session={session}"}).status_code == 401


@pytest.mark.parametrize(
    "cookie",
    ["v1.99999999999.deadbeef", "v1.1.0000", "v2.x.y", "garbage", ""],
)
def test_a_forged_or_malformed_cookie_is_refused(make_client: ClientFactory, cookie: str) -> None:
    client = browser(make_client)
    response = client.get("/ui/state", headers={"Cookie": f"keyrelay_session={cookie}"})
    assert response.status_code == 401


def test_a_session_ends_with_its_token_and_at_its_expiry() -> None:
    now = [1_000_000.0]
    sessions = PageSessions(["old", "new"], lifetime_s=60, clock=lambda: now[0])
    value = sessions.issue("old")
    assert sessions.accepts(value)
    assert not PageSessions(["new"], clock=lambda: now[0]).accepts(value)  # token rotated out
    assert not sessions.accepts(value.replace(".", ".1", 1))  # expiry edited: signature fails
    now[0] += 60
    assert not sessions.accepts(value)
    assert "old" not in repr(sessions) and "new" not in repr(sessions)


def test_a_wrong_cookie_is_charged_to_the_failure_budget(make_client: ClientFactory) -> None:
    client = browser(make_client, failures="2/minute")
    forged = {"Cookie": "keyrelay_session=v1.99999999999.deadbeef"}
    assert [client.get("/ui/state", headers=forged).status_code for _ in range(3)] == [
        401,
        401,
        429,
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "http://testserver:8787"},  # same site, another port: another origin
        {"Origin": "null"},
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_changes_from_another_origin_are_refused(
    make_client: ClientFactory, ks: Keystore, headers: dict[str, str]
) -> None:
    key = ks.add_key(name="k", provider="openai", secret=secret_for("csrf"))
    ks.add_key(name="k2", provider="openai", secret=secret_for("csrf2"))
    client = browser(make_client)
    log_in(client)

    assert client.post("/ui/login", json={"token": TOKEN}, headers=headers).status_code == 403
    toggled = client.patch(f"/ui/keys/{key.id}", json={"enabled": False}, headers=headers)
    assert toggled.status_code == 403
    assert client.post(f"/ui/keys/{key.id}/reset", headers=headers).status_code == 403
    assert ks.get_key(key.id).enabled is True
    # Sec-Fetch-Site alone is enough proof (a proxy may have rewritten Host).
    same = client.patch(
        f"/ui/keys/{key.id}", json={"enabled": False}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert same.status_code == 200


def test_logout_clears_the_cookie(make_client: ClientFactory) -> None:
    client = browser(make_client)
    log_in(client)
    response = client.post("/ui/logout", headers=SAME_ORIGIN)
    assert response.status_code == 204
    assert "keyrelay_session=" in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert client.get("/ui/state").status_code == 401


# -- the state the page polls --------------------------------------------------------------------


def test_state_has_keys_holders_audit_and_the_server_clock(
    make_client: ClientFactory, ks: Keystore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_UI_URL", "http://prefect.local:4200/")
    secrets = [secret_for("a"), secret_for("b")]
    a = ks.add_key(name="a", provider="anthropic", secret=secrets[0], max_concurrency=2)
    b = ks.add_key(name="b", provider="anthropic", secret=secrets[1], priority=200)
    run = uuid.uuid4()
    lease = ks.acquire(provider="anthropic", holder=f"flow-run {run} turn 3", ttl_s=60)
    ks.acquire(provider="anthropic", holder="cron job", ttl_s=60)
    resets_at = clock.now + timedelta(seconds=90)
    ks.mark_limited(
        b.id,
        RateLimitSignal(kind="rate_limit", resets_at=resets_at, retryable=True, source="test"),
    )
    client = browser(make_client)
    log_in(client)

    response = client.get("/ui/state")

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    for secret in secrets:
        assert secret not in response.text
    assert lease.id not in response.text
    state = response.json()
    assert set(state) == {"now", "poll_interval_s", "providers", "keys", "leases", "audit"}
    assert datetime.fromisoformat(state["now"]) == clock.now
    assert state["poll_interval_s"] == 2.0
    keys = {k["id"]: k for k in state["keys"]}
    assert keys[a.id]["masked"] == a.masked and keys[a.id]["active_leases"] == 2
    assert keys[b.id]["state"] == "cooling"
    assert datetime.fromisoformat(keys[b.id]["cooling_until"]) == resets_at
    assert state["providers"]["anthropic"]["cooling"] == 1
    by_holder = {entry["holder"]: entry for entry in state["leases"]}
    flow = by_holder[f"flow-run {run} turn 3"]
    assert (flow["key_id"], flow["flow_run_id"], flow["turn"]) == (a.id, str(run), 3)
    assert flow["flow_run_url"] == f"http://prefect.local:4200/runs/flow-run/{run}"
    assert by_holder["cron job"]["flow_run_id"] is None
    assert by_holder["cron job"]["flow_run_url"] is None
    assert [e["type"] for e in state["audit"]][:1] == ["key_rate_limited"]  # newest first


def test_state_links_no_run_without_prefect_ui_url(
    make_client: ClientFactory, ks: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    ks.add_key(name="a", provider="openai", secret=secret_for("a"))
    ks.acquire(provider="openai", holder=f"flow-run {uuid.uuid4()} turn 1", ttl_s=60)
    client = browser(make_client)
    log_in(client)
    [lease] = client.get("/ui/state").json()["leases"]
    assert lease["flow_run_id"] and lease["flow_run_url"] is None


def test_only_http_prefect_ui_urls_become_links() -> None:
    assert prefect_ui_base("https://prefect.example/") == "https://prefect.example"
    assert prefect_ui_base("javascript:alert(1)") is None
    assert prefect_ui_base("") is None


def test_state_shows_the_latest_audit_events_only(make_client: ClientFactory, ks: Keystore) -> None:
    key = ks.add_key(name="a", provider="openai", secret=secret_for("a"))
    for n in range(AUDIT_SHOWN + 5):
        ks.update_key(key.id, priority=n)
    client = browser(make_client)
    log_in(client)
    audit = client.get("/ui/state").json()["audit"]
    assert len(audit) == AUDIT_SHOWN
    assert audit[0]["id"] > audit[-1]["id"]


def test_the_page_has_its_own_budget_beside_the_apis(
    make_client: ClientFactory, ks: Keystore
) -> None:
    window_clock = WindowClock()
    client = browser(
        make_client,
        rate="2/minute",
        failures="2/minute",
        storage=ManualWindowStorage(window_clock),
        clock=window_clock,
    )
    for _ in range(PAGE_LIMIT + 5):  # loading the page and its assets spends nothing
        assert client.get("/ui/static/app.js").status_code == 200
    assert client.get("/ui/").status_code == 200
    log_in(client)  # one of the page's requests
    polls = [client.get("/ui/state").status_code for _ in range(PAGE_LIMIT - 1)]
    assert set(polls) == {200}  # 30 a minute at 2 s would have been refused at the API's rate
    refused = client.get("/ui/state")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "pool page" in refused.json()["detail"]
    # The API's budget is untouched by the page's polling, and the other way round.
    api = {"Authorization": f"Bearer {TOKEN}"}
    assert [client.get("/keys", headers=api).status_code for _ in range(3)] == [200, 200, 429]
    window_clock.advance(61)
    assert client.get("/ui/state").status_code == 200


# -- actions -------------------------------------------------------------------------------------


def test_reset_and_enable_disable_go_through_the_apis_rules(
    make_client: ClientFactory, ks: Keystore, clock: ManualClock
) -> None:
    client = browser(make_client)
    log_in(client)
    api = make_client()
    only = add_key(api, name="only", provider="claude-code")
    ks.mark_limited(
        only["id"],
        RateLimitSignal(
            kind="rate_limit",
            resets_at=clock.now + timedelta(hours=1),
            retryable=True,
            source="test",
        ),
    )

    reset = client.post(f"/ui/keys/{only['id']}/reset", headers=SAME_ORIGIN)
    assert reset.status_code == 200 and reset.json()["state"] == "available"
    assert ks.get_key(only["id"]).state == "available"
    assert [e.type for e in ks.audit_events(limit=1)] == ["key_reset"]

    refused = client.patch(f"/ui/keys/{only['id']}", json={"enabled": False}, headers=SAME_ORIGIN)
    assert refused.status_code == 409
    last = f"key {only['id']} is the last enabled claude-code key; add or enable another first"
    assert refused.json() == {"detail": last}
    other = add_key(api, name="other", provider="claude-code")
    disabled = client.patch(f"/ui/keys/{only['id']}", json={"enabled": False}, headers=SAME_ORIGIN)
    assert disabled.status_code == 200 and disabled.json()["state"] == "disabled"
    assert ks.get_key(only["id"]).enabled is False
    enabled = client.patch(f"/ui/keys/{only['id']}", json={"enabled": True}, headers=SAME_ORIGIN)
    assert enabled.status_code == 200 and ks.get_key(only["id"]).enabled is True
    assert other["id"] != only["id"]


def test_the_page_can_only_toggle_enabled(make_client: ClientFactory, ks: Keystore) -> None:
    key = ks.add_key(name="k", provider="openai", secret=secret_for("k"))
    client = browser(make_client)
    log_in(client)
    for body in (
        {"name": "renamed"},
        {"secret": secret_for("new")},
        {"enabled": False, "priority": 1},
        {"enabled": "false"},
        {},
    ):
        response = client.patch(f"/ui/keys/{key.id}", json=body, headers=SAME_ORIGIN)
        assert response.status_code == 422, body
    assert ks.get_key(key.id).name == "k" and ks.get_key(key.id).enabled is True
    missing = client.post("/ui/keys/999999/reset", headers=SAME_ORIGIN)
    assert missing.status_code == 404 and missing.json() == {"detail": "no key with id 999999"}
    assert client.delete(f"/ui/keys/{key.id}", headers=SAME_ORIGIN).status_code == 405
