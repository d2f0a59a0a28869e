"""The bubblewrap sandbox, with the real bwrap and real processes (no mocks).

Each check that something is hidden runs the same probe unsandboxed too and sees the secret
there, so a probe that could not find anything fails the test instead of passing it. These need
bwrap and fail, never skip, without it (CI installs it: apt-get install bubblewrap).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from api.emulator import (
    EmulatorConfig,
    RunningEmulator,
    conversation_digest,
    fingerprint,
    serve_emulator,
)
from flows.executors.claude_bin import ClaudeBinaryUnavailable, ensure_claude_bin
from flows.executors.cli_process import CliOutput, run_cli
from flows.executors.sandbox import (
    DEFAULT_SYSTEM_PATHS,
    Sandbox,
    SandboxUnavailable,
    read_from_sandbox,
)
from flows.executors.subprocess_env import child_env
from flows.executors.transcript import find_transcript
from keystore.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
PATH_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module", autouse=True)
def bwrap_works() -> None:
    try:
        Sandbox("required").check()
    except SandboxUnavailable as exc:
        pytest.fail(f"these tests need a working bubblewrap (CI installs it): {exc}")


@dataclass
class KeystoreFiles:
    """Where a flow run's keystore lives on the host, with recognisable contents."""

    home: Path
    master_key_file: Path
    database: Path
    marker: str


@pytest.fixture
def keystore_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeystoreFiles:
    marker = uuid.uuid4().hex
    home = tmp_path / "keyrelay-home"
    home.mkdir()
    master_key_file = home / "master.key"
    master_key_file.write_text(f"MASTER-KEY-FILE-{marker}")
    database = tmp_path / "db" / "keystore.db"
    database.parent.mkdir()
    database.write_text(f"SQLITE-{marker}")
    monkeypatch.setenv("KEYRELAY_HOME", str(home))
    monkeypatch.setenv("KEYRELAY_DATABASE_URL", f"sqlite:///{database}")
    return KeystoreFiles(home, master_key_file, database, marker)


@pytest.fixture
def turn(tmp_path: Path) -> Path:
    """A turn's private directory, laid out as the claude-code executor does."""
    path = tmp_path / "turn"
    for sub in ("home/.claude", "tmp"):
        (path / sub).mkdir(parents=True)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def run(
    sandbox: Sandbox,
    argv: Sequence[str],
    *,
    cwd: Path,
    writable: Sequence[Path] = (),
    env: Mapping[str, str] = PATH_ENV,
) -> subprocess.CompletedProcess[str]:
    wrapped, wrapped_env = sandbox.wrap(argv, env, cwd=cwd, writable=writable)
    return subprocess.run(
        wrapped, env=wrapped_env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def host_pids(marker: str) -> list[int]:
    """Host processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # exited meanwhile
    return found


def wait_gone(marker: str, timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := host_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# (a) the flow-run process and its environment are out of reach

# A stand-in for the flow-run process: it holds the secrets in its real environment (what
# /proc/<pid>/environ shows; a monkeypatched os.environ would not be there) and runs one
# command the way the executor does: child_env, then Sandbox.wrap.
PARENT = r"""
import json, os, subprocess, sys
from pathlib import Path
from flows.executors.sandbox import Sandbox
from flows.executors.subprocess_env import child_env

spec = json.loads(sys.argv[1])
turn = Path(spec["turn"])
env = child_env(
    secret="sk-ant-api03-placeholder-0123456789abcdefghij",
    home=turn / "home", config_dir=turn / "home" / ".claude", tmp_dir=turn / "tmp",
)
argv, env = Sandbox(spec["mode"]).wrap(spec["argv"], env, cwd=spec["cwd"], writable=[turn])
done = subprocess.run(argv, env=env, cwd=spec["cwd"], capture_output=True, text=True, timeout=60)
print(json.dumps({"pid": os.getpid(), "stdout": done.stdout, "returncode": done.returncode}))
"""
# Every process visible: its pid, command line and environment; then `cat /proc/*/environ`.
WALK_PROCESSES = r"""
for d in /proc/[0-9]*; do
  printf '== %s %s\n' "${d#/proc/}" "$(tr '\0' ' ' < "$d/cmdline")"
  tr '\0' '\n' < "$d/environ"
done
cat /proc/*/environ | tr '\0' '\n'
printf '== parent %s\n' "$PPID"; tr '\0' '\n' < /proc/$PPID/environ
"""
# The control reads only its parent's environment (not every process on this machine).
READ_PARENT = r"""printf '== parent %s\n' "$PPID"; tr '\0' '\n' < /proc/$PPID/environ"""


def run_from_parent(mode: str, script: str, *, parent_env: dict[str, str], turn: Path, cwd: Path):
    spec = {"mode": mode, "argv": ["/bin/sh", "-c", script], "turn": str(turn), "cwd": str(cwd)}
    done = subprocess.run(
        [sys.executable, "-c", PARENT, json.dumps(spec)],
        env=parent_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_the_parents_environment_and_pid_are_not_visible_inside(
    tmp_path: Path, turn: Path, workdir: Path
) -> None:
    marker = uuid.uuid4().hex
    secrets = {
        "KEYRELAY_MASTER_KEY": f"MASTER-{marker}",
        "KEYRELAY_DATABASE_URL": f"postgresql://keyrelay:DBPASS-{marker}@127.0.0.1/keystore",
        "PREFECT_API_KEY": f"pnu_{marker}",
    }
    parent_env = {**os.environ, **secrets, "KEYRELAY_HOME": str(tmp_path / "kh")}

    control = run_from_parent("off", READ_PARENT, parent_env=parent_env, turn=turn, cwd=workdir)
    assert f"DBPASS-{marker}" in control["stdout"]  # the probe finds it without a sandbox

    inside = run_from_parent(
        "required", WALK_PROCESSES, parent_env=parent_env, turn=turn, cwd=workdir
    )
    assert inside["returncode"] == 0
    assert marker not in inside["stdout"]
    visible = {
        line.split()[1]: line.split(maxsplit=2)[2:]
        for line in inside["stdout"].splitlines()
        if line.startswith("== ") and not line.startswith("== parent")
    }
    assert str(inside["pid"]) not in visible and str(os.getpid()) not in visible
    commands = {os.path.basename(cmd[0].split()[0]) for cmd in visible.values() if cmd}
    assert commands <= {"bwrap", "sh", "tr", "cat"}, commands
    # What the agent does see of its own environment: child_env's allow-list, nothing else.
    assert "sk-ant-api03-placeholder-0123456789abcdefghij" in inside["stdout"]


def test_the_environment_inside_is_exactly_the_callers(workdir: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ONLY_THIS": "yes"}
    done = run(Sandbox("required"), ["/usr/bin/env"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    inside = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert inside == {**env, "PWD": str(workdir)}  # bwrap sets PWD for --chdir


# (b) the keystore, the homes and the host's /tmp are not in the agent's world


def test_keystore_homes_and_host_tmp_are_hidden(
    keystore_files: KeystoreFiles, turn: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = keystore_files.marker
    prefect_home = Path(os.environ["PREFECT_HOME"])  # tests/conftest.py: a directory in /tmp
    (prefect_home / f"prefect-{marker}").write_text(f"PREFECT-{marker}")
    home_file = Path.home() / f".keyrelay-sandbox-test-{marker}"
    tmp_file = Path(tempfile.gettempdir()) / f"keyrelay-sandbox-test-{marker}"
    # A working directory inside KEYRELAY_HOME (run workdirs live there) stays reachable.
    workdir = keystore_files.home / "runs" / "r1"
    workdir.mkdir(parents=True)
    probes = [
        keystore_files.home,
        keystore_files.master_key_file,
        keystore_files.database,
        keystore_files.database.parent,
        Path.home(),
        home_file,
        Path(tempfile.gettempdir()),
        tmp_file,
        prefect_home,
        prefect_home / f"prefect-{marker}",
    ]
    # Only what could be listed or read reaches stdout (error messages would name the paths).
    script = 'for p in "$@"; do ls -A "$p"; cat "$p"; done 2>/dev/null; echo OK'
    argv = ["/bin/sh", "-c", script, "sh", *map(str, probes)]
    try:
        home_file.write_text(f"HOME-{marker}")
        tmp_file.write_text(f"TMP-{marker}")
        control = run(Sandbox("off"), argv, cwd=workdir, writable=[turn])
        for seen in ("MASTER-KEY-FILE", "SQLITE", "HOME", "TMP", "PREFECT"):
            assert f"{seen}-{marker}" in control.stdout
        inside = run(Sandbox("required"), argv, cwd=workdir, writable=[turn])
    finally:
        home_file.unlink()
        tmp_file.unlink()
    assert inside.returncode == 0 and inside.stdout.endswith("OK\n"), inside.stderr
    assert marker not in inside.stdout
    assert "master.key" not in inside.stdout and "keystore.db" not in inside.stdout


def test_a_working_directory_that_is_or_holds_the_keystore_is_refused(
    keystore_files: KeystoreFiles, tmp_path: Path
) -> None:
    sandbox = Sandbox("required")
    for cwd in (keystore_files.home, tmp_path, keystore_files.database.parent):
        with pytest.raises(InvalidInput, match=r"is or contains .* \(the keystore"):
            sandbox.wrap(["/bin/true"], PATH_ENV, cwd=cwd)
    with pytest.raises(InvalidInput, match="is hidden from the agent"):
        sandbox.wrap(["/bin/true"], PATH_ENV, cwd=Path.home())


def test_hidden_paths_inside_a_visible_directory_are_masked(
    keystore_files: KeystoreFiles, tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PREFECT_HOME inside the working directory, KEYRELAY_HOME inside a "system" directory.
    marker = keystore_files.marker
    prefect_home = workdir / ".prefect"
    prefect_home.mkdir()
    (prefect_home / "profiles.toml").write_text(f"PREFECT-{marker}")
    system_dir = tmp_path / "opt"
    (system_dir / "keyrelay").mkdir(parents=True)
    (system_dir / "keyrelay" / "master.key").write_text(f"SYSTEM-{marker}")
    (system_dir / "tool").write_text("a tool")
    monkeypatch.setenv("KEYRELAY_HOME", str(system_dir / "keyrelay"))
    sandbox = Sandbox(
        "required",
        environ={**os.environ, "PREFECT_HOME": str(prefect_home)},
        system_paths=(*DEFAULT_SYSTEM_PATHS, str(system_dir)),
    )
    script = f"cat .prefect/profiles.toml {system_dir}/keyrelay/master.key {system_dir}/tool"
    control = run(Sandbox("off"), ["/bin/sh", "-c", script], cwd=workdir)
    assert f"PREFECT-{marker}" in control.stdout and f"SYSTEM-{marker}" in control.stdout
    done = run(sandbox, ["/bin/sh", "-c", script], cwd=workdir)
    assert marker not in done.stdout
    assert done.stdout == "a tool"  # the rest of that directory is there


# (c) the working directory and the turn's directories are writable, the rest is not


def test_the_working_directory_is_writable_and_the_system_is_not(turn: Path, workdir: Path) -> None:
    script = (
        "echo result > out.txt && echo note > $HOME/note && echo t > $TMPDIR/t && "
        "echo private > /tmp/inside-only && "
        "{ touch /usr/evil 2>/dev/null && echo WROTE-USR || echo usr-read-only; }"
    )
    env = {**PATH_ENV, "HOME": str(turn / "home"), "TMPDIR": str(turn / "tmp")}
    done = run(
        Sandbox("required"), ["/bin/sh", "-c", script], cwd=workdir, writable=[turn], env=env
    )
    assert (done.returncode, done.stdout.strip()) == (0, "usr-read-only"), done.stderr
    assert (workdir / "out.txt").read_text() == "result\n"
    assert (turn / "home" / "note").read_text() == "note\n"
    assert (turn / "tmp" / "t").read_text() == "t\n"
    assert not Path("/tmp/inside-only").exists() and not Path("/usr/evil").exists()


def test_home_outside_the_writable_directories_is_refused(workdir: Path) -> None:
    with pytest.raises(InvalidInput, match=r"HOME=.* is not among the writable"):
        Sandbox("required").wrap(["/bin/true"], {"HOME": str(Path.home())}, cwd=workdir)


def test_files_the_agent_left_are_read_back_without_following_its_symlinks(
    keystore_files: KeystoreFiles, turn: Path, workdir: Path
) -> None:
    # The agent swaps its session transcript for a symlink to the master key, a symlinked
    # directory, and a FIFO (which would block a plain read forever).
    projects = turn / "home" / ".claude" / "projects"
    script = (
        f"mkdir -p {projects}/a && echo transcript > {projects}/a/ok.jsonl && "
        f"ln -s {keystore_files.master_key_file} {projects}/a/key.jsonl && "
        f"ln -s {keystore_files.home} {projects}/b && mkfifo {projects}/a/fifo.jsonl"
    )
    env = {**PATH_ENV, "HOME": str(turn / "home")}
    done = run(
        Sandbox("required"), ["/bin/sh", "-c", script], cwd=workdir, writable=[turn], env=env
    )
    assert done.returncode == 0, done.stderr
    assert read_from_sandbox(projects / "a" / "ok.jsonl", within=turn) == "transcript\n"
    assert (projects / "a" / "key.jsonl").read_text().startswith("MASTER-KEY-FILE")  # plain
    for name, problem in [
        ("a/key.jsonl", "leads out of"),
        ("b/master.key", "leads out of"),
        ("a/fifo.jsonl", "not a regular file"),
    ]:
        with pytest.raises(InvalidInput, match=problem):
            read_from_sandbox(projects / name, within=turn)


# (d) killing bwrap kills everything inside


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique `sleep` duration, to find the sleeps on the host; kills leftovers."""
    value = f"1000.{uuid.uuid4().int % 10**8:08d}"
    yield value
    for pid in host_pids(value):
        os.kill(pid, signal.SIGKILL)


def test_a_timeout_kills_the_whole_sandbox(marker: str, workdir: Path) -> None:
    # One sleep in the CLI's process group, one in a session of its own (setsid) that a
    # process-group kill cannot reach: without the sandbox's PID namespace it would survive.
    script = f"sleep {marker} & setsid sleep {marker} & wait"

    async def turn(sandbox: Sandbox) -> None:
        argv, env = sandbox.wrap(["/bin/sh", "-c", script], PATH_ENV, cwd=workdir)
        with pytest.raises(TimeoutError):
            await run_cli(argv, env=env, cwd=workdir, stdin=b"", timeout_s=1.0)

    anyio.run(turn, Sandbox("off"))
    assert len(wait_gone(marker, timeout_s=0.5)) == 1  # the control: setsid escaped
    for pid in host_pids(marker):
        os.kill(pid, signal.SIGKILL)
    assert wait_gone(marker) == []

    anyio.run(turn, Sandbox("required"))
    assert wait_gone(marker) == []


def running_sleeps(marker: str, timeout_s: float = 10.0) -> list[int]:
    """Wait for the sandbox's `sleep` processes to run (not just bwrap, whose argv has it too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sleeps = [p for p in host_pids(marker) if _cmdline(p).startswith(b"sleep\0")]
        if sleeps:
            return sleeps
        time.sleep(0.02)
    raise AssertionError(f"no sleep {marker} started")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_killing_bwrap_alone_kills_the_sandbox(marker: str, workdir: Path) -> None:
    argv, env = Sandbox("required").wrap(
        ["/bin/sh", "-c", f"setsid sleep {marker} & wait"], PATH_ENV, cwd=workdir
    )
    process = subprocess.Popen(argv, env=env, cwd=workdir, start_new_session=True)
    try:
        running_sleeps(marker)
        process.kill()  # only bwrap's own pid, not its group: --die-with-parent does the rest
    finally:
        process.wait()
    assert wait_gone(marker) == []


def test_the_sandboxs_pid_1_stays_in_bwraps_process_group(marker: str, workdir: Path) -> None:
    # What run_cli's group kill relies on from bwrap's first millisecond on (see the module's
    # note on --new-session).
    argv, env = Sandbox("required").wrap(
        ["/bin/sh", "-c", f"sleep {marker}"], PATH_ENV, cwd=workdir
    )
    process = subprocess.Popen(argv, env=env, cwd=workdir, start_new_session=True)
    try:
        running_sleeps(marker)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert [os.getpgid(int(child)) for child in children] == [process.pid]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert wait_gone(marker) == []


# (e) modes without a usable bwrap


def test_required_without_bwrap_refuses_with_the_install_hint(tmp_path: Path) -> None:
    sandbox = Sandbox("required", bwrap=tmp_path / "missing" / "bwrap")
    message = f"bubblewrap \\(bwrap\\) is not installed at {tmp_path}/missing/bwrap: apt-get"
    with pytest.raises(SandboxUnavailable, match=message):
        sandbox.check()
    with pytest.raises(SandboxUnavailable):
        sandbox.wrap(["/bin/true"], PATH_ENV, cwd=tmp_path)


def test_auto_without_bwrap_warns_and_runs_unsandboxed(tmp_path: Path, workdir: Path) -> None:
    sandbox = Sandbox("auto", bwrap=tmp_path / "missing" / "bwrap")
    warning = sandbox.check()
    assert warning is not None and "WITHOUT a sandbox" in warning and "not installed" in warning
    argv = ["/bin/sh", "-c", "echo $PPID"]
    assert sandbox.wrap(argv, PATH_ENV, cwd=workdir) == (argv, PATH_ENV)
    done = run(sandbox, argv, cwd=workdir)
    assert int(done.stdout) == os.getpid()  # a plain child of this process: no sandbox


def test_off_never_wraps(tmp_path: Path) -> None:
    sandbox = Sandbox("off", bwrap=tmp_path / "missing" / "bwrap")
    assert sandbox.check() is None
    assert sandbox.wrap(["x"], {"A": "b"}, cwd=tmp_path) == (["x"], {"A": "b"})


def test_a_bwrap_that_cannot_create_namespaces_is_named_with_its_error(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="cannot create namespaces here: bwrap: No perm"):
        Sandbox("required", bwrap=fake).check()
    warning = Sandbox("auto", bwrap=fake).check()
    assert warning is not None and "No permissions to create new namespace" in warning


def test_a_hanging_bwrap_is_given_up_on(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(SandboxUnavailable, match=r"did not finish a trivial command within 0\.5 s"):
        Sandbox("required", bwrap=fake, probe_timeout_s=0.5).check()
    assert time.monotonic() - started < 10


# (f) the real claude CLI, one turn inside the sandbox against the emulator


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningEmulator]:
    with serve_emulator(EmulatorConfig()) as running:
        yield running


@pytest.mark.slow
def test_the_real_claude_cli_runs_a_turn_in_the_sandbox(
    provider: RunningEmulator, keystore_files: KeystoreFiles, turn: Path, workdir: Path
) -> None:
    try:
        binary = ensure_claude_bin()
    except ClaudeBinaryUnavailable as exc:
        pytest.fail(f"the real claude CLI is required (CI installs it) and is missing: {exc}")
    provider.admin.reset(restore_config=True)
    api_key = f"sk-ant-api03-sandbox-{uuid.uuid4().hex}"
    config_dir = turn / "home" / ".claude"
    env = child_env(
        secret=api_key,
        home=turn / "home",
        config_dir=config_dir,
        tmp_dir=turn / "tmp",
        base_url=provider.base_url,
    )
    argv = [str(binary), "-p", "--output-format", "stream-json", "--verbose"]
    argv, env = Sandbox("required").wrap(argv, env, cwd=workdir, writable=[turn])
    assert Path(argv[0]).name == "bwrap"

    async def turn_once() -> CliOutput:
        return await run_cli(argv, env=env, cwd=workdir, stdin=b"hello sandbox", timeout_s=120)

    output = anyio.run(turn_once)
    assert output.returncode == 0, (output.stderr, output.other_stdout)
    (result,) = [e for e in output.events if e["type"] == "result"]
    expected = f"reply to {conversation_digest([])}: turn 1; last user text: hello sandbox"
    assert (result["is_error"], result["result"]) == (False, expected)
    # The session transcript landed in the turn's config dir on the host (resumable).
    assert find_transcript(config_dir, result["session_id"]) is not None
    (entry,) = provider.admin.log()
    assert (entry.status, entry.key_fingerprint) == (200, fingerprint(api_key))
