"""Make docs/pool-page.png: the pool page (`keyrelay api`, /ui/) with keys in different states.

Run by hand (not by the tests), from the repository root:

    apt-get install -y chromium chromium-driver     # Debian's, once
    .venv/bin/python docs/pool_page_screenshot.py    # ~15 s; writes docs/pool-page.png

Options: --out PATH, --width, --height.

What it does, in a temporary directory: starts `keyrelay api` on a free port with a SQLite
keystore and PREFECT_UI_URL set; adds six keys and puts them in the states an operator meets
(available with some utilization, busy under a flow run's lease, cooling with a reset minutes
away, disabled, draining, unusable); logs in to the page in headless Chromium, waits for the
first render and saves the screenshot; stops everything."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keystore import MasterKey, RateLimitSignal, open_keystore, utcnow  # noqa: E402
from tests.pool_page_browser import chromium, running_api  # noqa: E402


def _requests(*, limit: int, remaining: int, reset: datetime) -> dict[str, str]:
    """An API key's answer: its requests bucket."""
    return {
        "anthropic-ratelimit-requests-limit": str(limit),
        "anthropic-ratelimit-requests-remaining": str(remaining),
        "anthropic-ratelimit-requests-reset": reset.isoformat(),
    }


def _windows(*, five_hour: float, seven_day: float, now: datetime) -> dict[str, str]:
    """A subscription's answer: its 5-hour and 7-day windows."""
    return {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": str(five_hour),
        "anthropic-ratelimit-unified-5h-reset": str(int((now + timedelta(hours=3)).timestamp())),
        "anthropic-ratelimit-unified-7d-utilization": str(seven_day),
        "anthropic-ratelimit-unified-7d-reset": str(int((now + timedelta(days=4)).timestamp())),
    }


def _secret(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}{uuid.uuid4().hex}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pool-page.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1250)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="keyrelay-pool-page-") as tmp,
        running_api(Path(tmp), prefect_ui_url="http://127.0.0.1:4200") as api,
    ):
        ks = open_keystore(api.database_url, master_key=MasterKey([api.master_key.encode()]))
        try:
            now = utcnow()
            a = ks.add_key(
                name="team-a", provider="anthropic", secret=_secret("sk-ant-api03-"), priority=10
            )
            b = ks.add_key(
                name="team-b",
                provider="anthropic",
                secret=_secret("sk-ant-api03-"),
                max_concurrency=2,
                group="org-1",
            )
            c = ks.add_key(name="team-c", provider="anthropic", secret=_secret("sk-ant-api03-"))
            alice = ks.add_key(
                name="alice", provider="claude-code", secret=_secret("sk-ant-oat01-")
            )
            bob = ks.add_key(name="bob", provider="claude-code", secret=_secret("sk-ant-oat01-"))
            carol = ks.add_key(
                name="carol", provider="claude-code", secret=_secret("sk-ant-oat01-")
            )
            spare = ks.add_key(
                name="spare", provider="openai", secret=_secret("sk-proj-"), max_concurrency=4
            )
            for key, provider, headers in (
                (
                    a.id,
                    "anthropic",
                    _requests(limit=50, remaining=29, reset=now + timedelta(seconds=40)),
                ),
                (
                    b.id,
                    "anthropic",
                    _requests(limit=400, remaining=52, reset=now + timedelta(seconds=25)),
                ),
                (alice.id, "claude-code", _windows(five_hour=0.63, seven_day=0.31, now=now)),
            ):
                ks.record_response(key, provider=provider, status=200, headers=headers)
            ks.acquire(provider="anthropic", holder=f"flow-run {uuid.uuid4()} turn 2", ttl_s=300)
            ks.acquire(provider="anthropic", holder=f"flow-run {uuid.uuid4()} turn 1", ttl_s=300)
            ks.mark_limited(
                c.id,
                RateLimitSignal(
                    kind="rate_limit",
                    resets_at=now + timedelta(minutes=7, seconds=30),
                    retryable=True,
                    source="anthropic-ratelimit-requests-reset",
                ),
            )
            ks.acquire(provider="claude-code", holder=f"flow-run {uuid.uuid4()} turn 3", ttl_s=300)
            ks.update_key(alice.id, enabled=False)  # draining: its lease finishes
            ks.update_key(spare.id, enabled=False, force=True)
            ks.mark_unusable(bob.id, "401 from the provider: invalid x-api-key")
            ks.reset_key(carol.id)

            with chromium(args.width, args.height) as driver:
                from selenium.webdriver.common.by import By

                driver.get(f"{api.url}/ui/")
                time.sleep(1)
                driver.find_element(By.ID, "token").send_keys(api.token)
                driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
                deadline = time.monotonic() + 20
                while not driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr"):
                    if time.monotonic() > deadline:
                        raise SystemExit("the page did not render the keys")
                    time.sleep(0.2)
                time.sleep(1.5)  # let a countdown tick and the freshness line settle
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
        finally:
            ks.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
