"""The pool page in a real headless Chromium against a real `keyrelay api` (a subprocess, SQLite
keystore in a temporary directory). The keystore is driven directly, as workers would, and the
page must follow without a reload; its actions must reach the keystore.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); without them the tests
skip, except under CI (CI=true), where they fail."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from keystore import Keystore, MasterKey, RateLimitSignal, open_keystore, utcnow
from tests.pool_page_browser import RunningApi, chromium, chromium_paths, running_api

pytestmark = pytest.mark.slow

PREFECT_UI_URL = "http://127.0.0.1:4200"
COOLING_S = 4  # the page polls every 2 s: long enough to be seen cooling on a busy machine
WAIT_S = 20


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    if chromium_paths() is None:
        message = (
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with running_api(tmp_path_factory.mktemp("page"), prefect_ui_url=PREFECT_UI_URL) as running:
        yield running


@pytest.fixture(scope="module")
def store(api: RunningApi) -> Iterator[Keystore]:
    ks = open_keystore(api.database_url, master_key=MasterKey([api.master_key.encode()]))
    yield ks
    ks.close()


@pytest.fixture(scope="module")
def browser(api: RunningApi) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def ks(store: Keystore) -> Keystore:
    """The shared keystore, emptied: every test starts from no keys."""
    for key in store.list_keys():
        store.delete_key(key.id, force=True)
    return store


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except Exception:  # an element rebuilt between lookup and read
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def text_of(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def row(key_id: int) -> str:
    return f'#keys tr[data-key-id="{key_id}"]'


def logged_in(driver: Any, api: RunningApi) -> Any:
    """Open the page, logging in if the page asks for it."""
    from selenium.webdriver.common.by import By

    driver.get(f"{api.url}/ui/")
    wait_for(
        lambda: (
            driver.find_element(By.ID, "login").is_displayed()
            or driver.find_element(By.ID, "pool").is_displayed()
        ),
        "the page to start",
    )
    if driver.find_element(By.ID, "login").is_displayed():
        driver.find_element(By.ID, "token").send_keys(api.token)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for(lambda: driver.find_element(By.ID, "pool").is_displayed(), "the pool after login")
    return driver


def test_login_lists_keys_masked_and_never_a_secret(
    api: RunningApi, browser: Any, ks: Keystore
) -> None:
    from selenium.webdriver.common.by import By

    secrets = [f"sk-ant-api03-{uuid.uuid4().hex}{uuid.uuid4().hex}-{n}" for n in range(2)]
    a = ks.add_key(name="team-a", provider="anthropic", secret=secrets[0], priority=10)
    b = ks.add_key(name="team-b", provider="anthropic", secret=secrets[1], max_concurrency=3)

    browser.delete_all_cookies()
    browser.get(f"{api.url}/ui")  # redirected to /ui/
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), "the login form")
    assert browser.current_url == f"{api.url}/ui/"
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(lambda: "Login refused" in text_of(browser, "#login-error"), "the refusal")
    logged_in(browser, api)

    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row(b.id)), "the keys")
    assert a.masked in text_of(browser, row(a.id)) and b.masked in text_of(browser, row(b.id))
    assert "available" in text_of(browser, row(a.id))
    assert "0 / 3" in text_of(browser, row(b.id))  # active leases / max_concurrency
    assert "team-a" in text_of(browser, "#keys tbody tr:first-child")  # priority 10 first
    source = browser.page_source
    for secret in secrets:
        assert secret not in source
        assert secret[:20] not in source  # more than the masked form ever shows
    [cookie] = browser.get_cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui"
    assert api.token not in cookie["value"]
    assert "key_added" in text_of(browser, "#audit")


def test_a_key_cools_and_comes_back_while_the_page_is_open(
    api: RunningApi, browser: Any, ks: Keystore
) -> None:
    key = ks.add_key(name="cools", provider="openai", secret=f"sk-proj-{uuid.uuid4().hex}")
    logged_in(browser, api)
    wait_for(lambda: "available" in text_of(browser, row(key.id)), "the key, available")
    browser.execute_script("window.__sameDocument = true;")

    ks.mark_limited(
        key.id,
        RateLimitSignal(
            kind="rate_limit",
            resets_at=utcnow() + timedelta(seconds=COOLING_S),
            retryable=True,
            source="test",
        ),
    )

    shown = wait_for(
        lambda: (t := text_of(browser, row(key.id))) and "cooling" in t and t,
        "the key to show cooling",
        timeout_s=COOLING_S,
    )
    first = re.search(r"resets in (\d+):(\d\d)", shown)
    assert first, shown
    assert int(first.group(1)) * 60 + int(first.group(2)) <= COOLING_S
    time.sleep(1.2)  # no poll needed: the countdown ticks by itself
    later = re.search(r"resets in (\d+):(\d\d)|resets in now", text_of(browser, row(key.id)))
    assert later and later.group(0) != first.group(0)
    wait_for(
        lambda: "available" in text_of(browser, row(key.id)),
        "the key to be available after its reset",
        timeout_s=COOLING_S + 10,
    )
    assert browser.execute_script("return window.__sameDocument === true;")  # no reload
    assert "key_rate_limited" in text_of(browser, "#audit")


def test_actions_reach_the_keystore_and_a_refusal_is_shown(
    api: RunningApi, browser: Any, ks: Keystore
) -> None:
    from selenium.webdriver.common.by import By

    first = ks.add_key(
        name="first", provider="claude-code", secret=f"sk-ant-oat01-{uuid.uuid4().hex}"
    )
    second = ks.add_key(
        name="second", provider="claude-code", secret=f"sk-ant-oat01-{uuid.uuid4().hex}"
    )
    ks.mark_limited(
        first.id,
        RateLimitSignal(
            kind="rate_limit",
            resets_at=utcnow() + timedelta(hours=1),
            retryable=True,
            source="test",
        ),
    )
    logged_in(browser, api)

    def button(key_id: int, role: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'{row(key_id)} button[data-role="{role}"]')

    wait_for(lambda: button(first.id, "reset").is_displayed(), "the reset button")
    assert re.search(r"resets in (1:00:00|59:\d\d)\n", text_of(browser, row(first.id)))
    button(first.id, "reset").click()
    wait_for(lambda: ks.get_key(first.id).state == "available", "the keystore to say available")
    wait_for(lambda: "available" in text_of(browser, row(first.id)), "the page to say available")
    assert "cooling reset" in text_of(browser, "#notice")

    button(second.id, "toggle").click()
    wait_for(lambda: ks.get_key(second.id).state == "disabled", "the keystore to say disabled")
    wait_for(lambda: "Enable" in button(second.id, "toggle").text, "the Enable button")
    focused = browser.switch_to.active_element  # a keyboard user stays on the rebuilt button
    assert focused.get_attribute("aria-label") == "Enable second"
    assert "disabled" in text_of(browser, row(second.id))

    button(first.id, "toggle").click()  # the provider's last enabled key: the API says 409
    alert = wait_for(
        lambda: browser.find_element(By.ID, "alert").is_displayed() and text_of(browser, "#alert"),
        "the refusal",
    )
    assert f"key {first.id} is the last enabled claude-code key" in alert
    assert ks.get_key(first.id).enabled is True

    button(second.id, "toggle").click()
    wait_for(lambda: ks.get_key(second.id).enabled, "the keystore to say enabled again")


def test_a_lease_shows_its_flow_run_and_a_disabled_key_drains(
    api: RunningApi, browser: Any, ks: Keystore
) -> None:
    from selenium.webdriver.common.by import By

    key = ks.add_key(name="held", provider="anthropic", secret=f"sk-ant-api03-{uuid.uuid4().hex}")
    ks.add_key(
        name="spare", provider="anthropic", secret=f"sk-ant-api03-{uuid.uuid4().hex}", priority=200
    )
    run_id = uuid.uuid4()
    lease = ks.acquire(provider="anthropic", holder=f"flow-run {run_id} turn 1", ttl_s=120)
    other = ks.acquire(provider="anthropic", holder="nightly-report", ttl_s=120)
    try:
        logged_in(browser, api)
        link = wait_for(
            lambda: browser.find_element(By.CSS_SELECTOR, f"{row(key.id)} .holders a"),
            "the holder's link",
        )
        assert link.get_attribute("href") == f"{PREFECT_UI_URL}/runs/flow-run/{run_id}"
        assert "turn 1" in link.text
        assert "nightly-report" in text_of(browser, "#keys")

        ks.update_key(key.id, enabled=False)
        wait_for(
            lambda: "draining (1 lease finishing)" in text_of(browser, row(key.id)),
            "the key to show draining",
        )
    finally:
        ks.release(lease)
        ks.release(other)
    drained = wait_for(
        lambda: "draining" not in (t := text_of(browser, row(key.id))) and t, "the key drained"
    )
    assert "disabled" in drained and "0 / 1" in drained


# Adds per-window `limits` to every key of the state the page fetches: the shape the keystore's
# KeyPublic is gaining (bucket, limit, remaining, utilization, reset_at).
def test_each_limit_window_a_provider_reported_is_drawn(
    api: RunningApi, browser: Any, ks: Keystore
) -> None:
    from selenium.webdriver.common.by import By

    key = ks.add_key(name="windows", provider="anthropic", secret=f"sk-ant-{uuid.uuid4().hex}")
    logged_in(browser, api)
    wait_for(lambda: "no limits reported yet" in text_of(browser, row(key.id)), "an empty cell")
    reset = ks.now() + timedelta(seconds=90)
    ks.record_response(
        key.id,
        provider="anthropic",
        status=200,
        headers={
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "12",
            "anthropic-ratelimit-requests-reset": reset.isoformat(),
            "anthropic-ratelimit-unified-5h-utilization": "0.97",
            "anthropic-ratelimit-unified-5h-reset": str(int(reset.timestamp())),
        },
    )
    cell = wait_for(
        lambda: (t := text_of(browser, f"{row(key.id)} .limits")) and "unified-5h" in t and t,
        "the per-window limits",
    )
    assert "requests" in cell and "76% used" in cell and "12 of 50 left" in cell
    assert "97% used" in cell
    assert re.search(r"resets in 1:(2\d|30)", cell), cell
    bars = browser.find_elements(By.CSS_SELECTOR, f'{row(key.id)} [role="progressbar"]')
    assert [b.get_attribute("aria-valuenow") for b in bars] == ["76", "97"]
    assert [b.get_attribute("aria-label") for b in bars] == ["requests used", "unified-5h used"]


def test_the_page_ships_everything_it_loads(api: RunningApi, browser: Any, ks: Keystore) -> None:
    """Offline: every resource the page loaded came from the API's own origin."""
    logged_in(browser, api)
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);"
    )
    assert urls, "the page loaded nothing?"
    assert all(str(u).startswith(f"{api.url}/ui/") for u in urls), urls
