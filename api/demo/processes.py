"""The demo's child processes: free ports, start each in a session of its own with a log file,
wait until it answers, stop it (SIGTERM to its process group, SIGKILL after a timeout).

Every child carries `KEYRELAY_DEMO_ID=<id>` in its environment. Prefect's runner starts each flow
run in a session of its own, so a group kill of the serve process does not reach a flow run that
outlived it; `kill_marked` finds those by the marker (Linux /proc) and ends them too."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from keystore import KeyrelayError

__all__ = [
    "MARKER_VAR",
    "ChildProcess",
    "DemoError",
    "free_port",
    "kill_marked",
    "marked_pids",
    "sigint_deferred",
    "start_process",
    "wait_until",
]

MARKER_VAR = "KEYRELAY_DEMO_ID"
STOP_TIMEOUT_S = 10.0
_PROC = Path("/proc")


class DemoError(KeyrelayError):
    """The demo could not go on (a server did not start, runs did not finish)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ChildProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of its log, indented, for an error message (the log itself is removed with
        the demo's directory)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        last = text.rstrip().splitlines()[-lines:]
        return f"the end of its log ({self.log.name}):\n" + "\n".join(f"  {line}" for line in last)

    def exited(self, what: str) -> DemoError:
        return DemoError(
            f"{what}: {self.name} exited with code {self.popen.returncode}; {self.tail()}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the whole process group, SIGKILL to it after `timeout_s`."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        # The leader may be gone while others of its group are not: kill what is left.
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def start_process(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path
) -> ChildProcess:
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own group: Ctrl-C in the terminal reaches only the demo
        )
    return ChildProcess(name=name, popen=popen, log=log)


def wait_until(
    ready: Callable[[], bool], *, child: ChildProcess, timeout_s: float, what: str
) -> None:
    """Poll `ready` until it holds; a child that exits or a timeout is a DemoError with the tail
    of its log."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not child.alive():
            raise child.exited(what)
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not ready after {timeout_s:.0f} s; {child.tail()}")
        time.sleep(0.2)


def marked_pids(marker: str) -> list[int]:
    """Processes (of any user we may read) whose environment holds MARKER_VAR=marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in _PROC.glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return sorted(found)


def kill_marked(marker: str, timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """End every process still carrying the marker (SIGTERM, then SIGKILL); returns their pids."""
    pids = marked_pids(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while (left := marked_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Shield a cleanup from a second Ctrl-C (it is bounded by STOP_TIMEOUT_S per step)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to shield
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
