"""Everything the demo runs on, started in order and stopped in reverse, also on Ctrl-C and errors:

1. a temporary directory (PREFECT_HOME, the keystore's SQLite file, KEYRELAY_HOME, logs);
2. `prefect server start` on a free 127.0.0.1 port (SQLite, UI on), as a child process;
3. the provider emulator in a thread of this process, on another free port;
4. the keystore with the demo keys (a generated master key, never written to disk);
5. `python -m deployments.serve --limit N` as a child process, pointed at all of the above.

Nothing is left behind: children are stopped by process group, stragglers by their marker
(processes.kill_marked), and the directory is removed unless the caller keeps it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.demo.processes import (
    MARKER_VAR,
    ChildProcess,
    DemoError,
    free_port,
    kill_marked,
    sigint_deferred,
    start_process,
    wait_until,
)
from api.demo.scenario import DemoOptions, emulator_config, seed_keystore
from api.emulator import RunningEmulator, serve_emulator
from keystore import KeyPublic, Keystore, MasterKey, open_keystore

__all__ = ["DEPLOYMENT", "DemoStack", "demo_stack"]

DEPLOYMENT = "agent-run/default"
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 90.0
# Variables of the caller's shell that would point the children at something else.
_FOREIGN = ("PREFECT_", "KEYRELAY_", "ANTHROPIC_", "OPENAI_", "CLAUDE_CODE_")


@dataclass
class DemoStack:
    workdir: Path
    job_dir: Path  # the claude-code job's working directory
    ui_url: str  # the Prefect server (UI at the root, API under /api)
    env: dict[str, str]  # what the serve process and its flow runs see
    emulator: RunningEmulator
    store: Keystore
    keys: list[KeyPublic]
    children: list[ChildProcess] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def check_children(self) -> None:
        for child in self.children:
            if not child.alive():
                raise child.exited("the demo cannot go on")


def _project_root() -> Path:
    """Where `deployments/` and `flows/` live (found without importing them)."""
    spec = importlib.util.find_spec("deployments")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the deployments package is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _base_env(workdir: Path, marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    prefect_home = workdir / "prefect"
    return {
        **env,
        MARKER_VAR: marker,
        "PYTHONUNBUFFERED": "1",
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
    }


def _answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def _start_prefect_server(workdir: Path, env: dict[str, str]) -> tuple[ChildProcess, str]:
    port = free_port(HOST)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    child = start_process("prefect server", argv, env=env, cwd=workdir, log=workdir / "server.log")
    return child, f"http://{HOST}:{port}"


@contextlib.contextmanager
def demo_stack(
    options: DemoOptions, *, keep_files: bool = False, say: Callable[[str], None] = print
) -> Iterator[DemoStack]:
    workdir = Path(tempfile.mkdtemp(prefix="keyrelay-demo-"))
    marker = uuid.uuid4().hex
    children: list[ChildProcess] = []
    swept: list[int] = []
    say(f"working directory {workdir} ({'kept' if keep_files else 'removed at the end'})")
    try:
        with contextlib.ExitStack() as resources:
            emulator = resources.enter_context(serve_emulator(emulator_config(options)))
            master = MasterKey.generate()
            env = _base_env(workdir, marker)
            job_dir = workdir / "job"  # the claude-code job's repository, as a user would give it
            job_dir.mkdir()
            env |= {
                "KEYRELAY_HOME": str(workdir / "keyrelay"),
                "KEYRELAY_RUNS_DIR": str(workdir / "runs"),
                "KEYRELAY_DATABASE_URL": f"sqlite:///{workdir / 'keystore.db'}",
                "KEYRELAY_MASTER_KEY": master,
                "ANTHROPIC_BASE_URL": emulator.base_url,
                "OPENAI_BASE_URL": emulator.openai_base_url,
            }
            store = open_keystore(
                env["KEYRELAY_DATABASE_URL"], master_key=MasterKey([master.encode()])
            )
            resources.callback(store.close)
            keys = seed_keystore(store, options)
            say(
                f"provider emulator at {emulator.base_url}: {len(keys)} {options.agent} keys, "
                f"each {options.requests} requests per {options.window_s:g} s window"
            )
            # Registered last, so it runs first: flow runs end before the emulator and the
            # keystore they talk to go away.
            resources.callback(_stop_children, children, marker, swept)
            server, ui_url = _start_prefect_server(workdir, _server_env(env))
            children.append(server)
            say(f"Prefect server starting at {ui_url} (pid {server.pid})")
            wait_until(
                _answers(f"{ui_url}/api/ready"),
                child=server,
                timeout_s=SERVER_START_TIMEOUT_S,
                what="the Prefect server did not start",
            )
            root = _project_root()
            if options.agent == "claude-code":
                env["KEYRELAY_CLAUDE_BIN"] = _claude_bin(env, root, say)
            env["PREFECT_API_URL"] = f"{ui_url}/api"
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            argv = [sys.executable, "-m", "deployments.serve", "--limit", str(options.limit)]
            serve = start_process(
                "serve process", argv, env=env, cwd=root, log=workdir / "serve.log"
            )
            children.append(serve)
            say(
                f"serve process for {DEPLOYMENT} started (pid {serve.pid}, at most "
                f"{options.limit} runs at once)"
            )
            yield DemoStack(
                workdir=workdir,
                job_dir=job_dir,
                ui_url=ui_url,
                env=env,
                emulator=emulator,
                store=store,
                keys=keys,
                children=children,
            )
    finally:
        with sigint_deferred():
            _stop_children(children, marker, swept)  # a no-op when the ExitStack did it
            kept = f"; its files are in {workdir}" if keep_files else ""
            strays = f" (and {len(swept)} stray process(es) by their marker)" if swept else ""
            say(f"stopped everything the demo started{strays}{kept}")
            if not keep_files:
                shutil.rmtree(workdir, ignore_errors=True)


def _claude_bin(env: dict[str, str], root: Path, say: Callable[[str], None]) -> str:
    """The real `claude` CLI, installed once into the cache if it is not there (~400 MB from
    npm), located by the flows' own installer run as a program (the demo imports no flows)."""
    say("locating the claude CLI (installed from npm on first use, which takes a few minutes)")
    found = subprocess.run(
        [sys.executable, "-m", "flows.executors.claude_bin"],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise DemoError(f"the claude CLI is not available: {found.stderr.strip()[-500:]}")
    return found.stdout.strip().splitlines()[-1]


def _server_env(env: dict[str, str]) -> dict[str, str]:
    """The server needs no keystore secrets and no provider addresses."""
    return {k: v for k, v in env.items() if not k.startswith(_FOREIGN[1:])}


def _stop_children(children: list[ChildProcess], marker: str, swept: list[int]) -> None:
    with sigint_deferred():
        for child in reversed(children):  # serve first: its flow runs stop before the server
            child.stop()
        # Flow-run processes live in sessions of their own; the serve process should have ended
        # them, and whatever it did not is found by the marker.
        swept.extend(pid for pid in kill_marked(marker) if pid not in swept)
