"""Shared by the pool page's browser test and docs/pool_page_screenshot.py: a real `keyrelay api`
in a subprocess on a free port, and a headless Chromium driven through its chromedriver.

Selenium and Debian's `chromium` + `chromium-driver` packages, not Playwright: Playwright's own
browser download needs the internet (which CI does not have), and Debian builds its
chromedriver from the same source as its chromium, so the two always match; Playwright against
a browser it did not ship is not a pairing it promises to keep working."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's own sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed (`apt-get install chromium
    chromium-driver`)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningApi:
    url: str
    token: str
    home: Path
    master_key: str
    database_url: str


@contextmanager
def running_api(home: Path, *, prefect_ui_url: str | None = None) -> Iterator[RunningApi]:
    """`keyrelay api` (python -m api.cli api) with a SQLite keystore under `home`; stopped on
    exit. Open the same keystore with `open_keystore(url=api.database_url, master_key=...)`."""
    port = free_port()
    token = f"page-token-{uuid.uuid4().hex}"
    master_key = Fernet.generate_key().decode()
    database_url = f"sqlite:///{home / 'keystore.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYRELAY_", "PREFECT_UI"))}
    env |= {
        "KEYRELAY_HOME": str(home),
        "KEYRELAY_DATABASE_URL": database_url,
        "KEYRELAY_MASTER_KEY": master_key,
        "KEYRELAY_API_TOKEN": token,
        "PYTHONPATH": str(ROOT),
    }
    if prefect_ui_url:
        env["PREFECT_UI_URL"] = prefect_ui_url
    log = (home / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # imports are slow on a busy 2-core machine
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"keyrelay api exited: {(home / 'api.log').read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("keyrelay api did not start within 90 s")
            time.sleep(0.2)
        yield RunningApi(url, token, home, master_key, database_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[object]:
    """A headless Chromium WebDriver (selenium), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    browser, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
