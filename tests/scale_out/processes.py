"""Child processes for the scale-out test: a real `prefect server start`, `prefect worker start`
and Prefect CLI calls, each in its own session so it can be stopped with everything it started.

A process worker starts every flow run in a new process group of its own (Prefect 3.9), so
stopping a worker's group does not reach its flow runs: `ChildProcess.stop` collects the
descendants from /proc first and stops their groups too (Linux)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]  # the CLI of this interpreter's Prefect
# Settings of the test session (tests/conftest.py) or of the user's shell that must not reach the
# child processes: each child gets exactly the PREFECT_* / KEYRELAY_* / provider settings given.
_SCRUBBED_PREFIXES = ("PREFECT_", "KEYRELAY_", "ANTHROPIC_", "OPENAI_", "CLAUDE_CODE_")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class ChildProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, name: str, args: list[str], *, env: Mapping[str, str], cwd: Path, log: Path
    ) -> ChildProcess:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, process, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} in its output:\n{self.output()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to it and everything it started, at once: the machine went away. Unlike
        `stop`, it leaves no moment in which a shutting-down Prefect worker still claims runs."""
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            _signal_group(pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to its session and to the groups of everything it started, then SIGKILL."""
        pids = [self.process.pid, *descendants(self.process.pid)]
        if self.process.poll() is None:
            for pid in pids:
                _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (
            self.process.poll() is None or any(_alive(p) for p in pids[1:])
        ):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                _signal_group(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def start_prefect_server(home: Path, log: Path) -> tuple[ChildProcess, str]:
    """`prefect server start` (SQLite in `home`, every server service on) on a free port."""
    port = free_port()
    env = child_env(
        PREFECT_HOME=str(home),
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5",
    )
    args = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = ChildProcess.start("prefect server", args, env=env, cwd=home, log=log)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the Prefect server did not start:\n{server.output()}")
        time.sleep(0.3)


def prefect_cli(args: list[str], *, env: Mapping[str, str], cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [*PREFECT, *args],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout
