"""Make docs/awaiting-rate-limit.png: the Prefect UI showing a keyrelay run that waits as
`Scheduled / AwaitingRateLimit` because every key is spent.

Run by hand (not by the tests), from the repository root:

    apt-get install -y chromium          # Debian's headless-capable Chromium, once
    .venv/bin/python docs/screenshot.py  # ~1 minute; writes docs/awaiting-rate-limit.png

Options: --out PATH, --chromium PATH (default: `chromium` on PATH), --list, --keep (leave everything
running afterwards and print the UI address, to look around; Ctrl-C stops it).

What it does, all in a temporary directory and on free ports:
1. a Prefect server with its UI (`prefect server start`, SQLite, own PREFECT_HOME);
2. the provider emulator with one request per key per 10 minutes;
3. a keystore with two Anthropic keys and `python -m deployments.serve` serving `agent-run/default`;
4. a 3-turn run: turn 1 on key a, turn 2 rotates to key b, turn 3 finds both spent and the run
   defers to key a's reset, 10 minutes away;
5. a headless Chromium screenshot of the flow run's page (the AwaitingRateLimit badge, the key
   rotation and the deferral message with its "resuming at ..." in the logs); with --list also
   one of the runs list, next to it as `*-list.png`;
6. stops every process it started (each in its own process group).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.emulator import EmulatorConfig, LimitRule, serve_emulator  # noqa: E402
from keystore import MasterKey, open_keystore  # noqa: E402

WINDOW_S = 600.0  # the keys reset in 10 minutes: the run stays waiting while we take the picture
WIDTH, HEIGHT = 1400, 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**settings: str) -> dict[str, str]:
    """This environment without any Prefect / keyrelay / provider settings, plus `settings`."""
    prefixes = ("PREFECT_", "KEYRELAY_", "ANTHROPIC_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **settings)
    return env


@contextmanager
def _process(
    args: list[str], *, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait(
    what: str, check: Callable[[], object], timeout_s: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.5)


def _screenshot(chromium: str, url: str, out: Path, profile: Path) -> None:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "--virtual-time-budget=15000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "awaiting-rate-limit.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--list", action="store_true", help="also keep the runs-list screenshot")
    parser.add_argument("--keep", action="store_true", help="keep everything running afterwards")
    args = parser.parse_args()
    if not shutil.which(args.chromium):
        raise SystemExit(f"no Chromium at {args.chromium!r}: apt-get install -y chromium")

    with tempfile.TemporaryDirectory(prefix="keyrelay-screenshot-") as tmp_dir:
        tmp = Path(tmp_dir)
        port = _free_port()
        ui_url = f"http://127.0.0.1:{port}"
        api_url = f"{ui_url}/api"
        prefect = [sys.executable, "-m", "prefect"]
        # The UI asks this address for the API (otherwise it assumes port 4200).
        server_env = _env(PREFECT_HOME=str(tmp / "prefect"), PREFECT_UI_API_URL=api_url)
        server_log = tmp / "server.log"
        server_args = [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        print(f"Prefect server on {ui_url} ...", flush=True)
        with _process(server_args, env=server_env, log=server_log):
            _wait(
                "the Prefect server",
                lambda: httpx.get(f"{api_url}/health", timeout=2).status_code == 200,
                90,
                server_log,
            )
            limits = [LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=WINDOW_S)]
            with serve_emulator(EmulatorConfig(limits=limits)) as emulator:
                master = Fernet.generate_key().decode()
                database = f"sqlite:///{tmp / 'keystore.db'}"
                store = open_keystore(database, master_key=MasterKey([master.encode()]))
                for name, priority in (("team-a", 1), ("team-b", 2)):
                    secret = f"sk-ant-api03-{name}-{uuid.uuid4().hex}"
                    store.add_key(name=name, provider="anthropic", secret=secret, priority=priority)
                store.close()
                serve_env = _env(
                    PREFECT_HOME=str(tmp / "prefect"),
                    PREFECT_API_URL=api_url,
                    KEYRELAY_HOME=str(tmp / "keyrelay"),
                    KEYRELAY_DATABASE_URL=database,
                    KEYRELAY_MASTER_KEY=master,
                    ANTHROPIC_BASE_URL=emulator.base_url,
                )
                serve_log = tmp / "serve.log"
                serve_args = [sys.executable, "-m", "deployments.serve", "--limit", "2"]
                with _process(serve_args, env=serve_env, log=serve_log):
                    _wait("serve", lambda: "agent-run/default" in serve_log.read_text(), 90)
                    run_id = _start_run(api_url)
                    print(f"run {ui_url}/runs/flow-run/{run_id} started ...", flush=True)
                    _wait("the run to defer", lambda: _deferred(api_url, run_id), 120, serve_log)
                    print("deferred; taking the screenshots ...", flush=True)
                    profile = tmp / "chromium"
                    _screenshot(
                        args.chromium, f"{ui_url}/runs/flow-run/{run_id}", args.out, profile
                    )
                    print(f"wrote {args.out}")
                    if args.list:
                        listed = args.out.with_name(args.out.stem + "-list.png")
                        _screenshot(args.chromium, f"{ui_url}/runs", listed, profile)
                        print(f"wrote {listed}")
                    if args.keep:
                        print(f"UI at {ui_url}; Ctrl-C stops everything", flush=True)
                        try:
                            while True:
                                time.sleep(3600)
                        except KeyboardInterrupt:
                            pass


def _start_run(api_url: str) -> str:
    deployments = httpx.post(
        f"{api_url}/deployments/filter",
        json={"deployments": {"name": {"any_": ["default"]}}},
        timeout=10,
    ).json()
    (deployment,) = [d for d in deployments if d["entrypoint"].endswith("agent_run")]
    response = httpx.post(
        f"{api_url}/deployments/{deployment['id']}/create_flow_run",
        json={
            "name": "refactor-billing-module",
            "parameters": {
                "prompt": "Refactor the billing module and explain each change.",
                "agent": "anthropic",
                "steps": 3,
                "followups": ["Now add tests for it.", "Summarise what changed."],
                "run_label": "billing-refactor",
            },
        },
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["id"])


def _deferred(api_url: str, run_id: str) -> bool:
    run = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=5).json()
    state = run.get("state") or {}
    return state.get("type") == "SCHEDULED" and state.get("name") == "AwaitingRateLimit"


if __name__ == "__main__":
    main()
