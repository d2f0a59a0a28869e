"""A local Prefect server for a benchmark: `prefect server start` in a temporary PREFECT_HOME
(its own SQLite database), API only (no UI, no background services, no analytics), on a free
port; stopped on exit. `cpu_s()` is the CPU it has used so far (to show what orchestration
costs next to the client's own)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.goodput.proc_cpu import tree_cpu_s

__all__ = ["PrefectServer", "prefect_server"]

_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        return tree_cpu_s(self.process.pid)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_healthy(server: PrefectServer, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not start in {_START_TIMEOUT_S:.0f} s")


@contextmanager
def prefect_server() -> Iterator[PrefectServer]:
    home = Path(tempfile.mkdtemp(prefix="keyrelay-bench-prefect-"))
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-services", "--no-ui", "--analytics-off"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home, process=process)
    try:
        _wait_until_healthy(server, log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)
