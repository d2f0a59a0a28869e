"""Run an agent's CLI inside a bubblewrap (`bwrap`) sandbox, so that nothing secret of the host
is in the agent's world: not the flow-run process (its environment holds KEYRELAY_MASTER_KEY,
KEYRELAY_DATABASE_URL, Prefect's tokens), not KEYRELAY_HOME (keystore, master key file), not
PREFECT_HOME, not the invoking user's home, not the host's /tmp. The network stays shared: the
CLI reaches the relay on the host's 127.0.0.1.

In the claude-code executor (`turn` is the directory holding the turn's HOME, CLAUDE_CONFIG_DIR
and TMPDIR):

    self.sandbox = Sandbox(mode)        # in __init__: "required" | "auto" | "off"

    # Before the first turn: probes bwrap (once per process). Raises SandboxUnavailable when
    # "required" and bwrap is unusable; in "auto" returns a warning for the run's log.
    warning = await anyio.to_thread.run_sync(self.sandbox.check)
    if warning:
        get_run_logger().warning(warning)

    # Each turn, after child_env(...):
    argv, env = self.sandbox.wrap(self._argv(...), env, cwd=self.workdir, writable=[Path(turn)])
    output = await run_cli(argv, env=env, cwd=self.workdir, stdin=..., timeout_s=...)
    transcript = read_from_sandbox(path, within=config_dir)    # instead of path.read_text()

`wrap` returns a new env dict (clear it after the turn, like the one it was given) and raises
InvalidInput for a working directory that is or contains KEYRELAY_HOME. Start the wrapped argv
the way run_cli does: in a new session (`start_new_session=True`), from a thread that outlives
the process (bwrap's --die-with-parent fires when the spawning thread exits).

Files the agent could write (working directory, the turn's dirs) are untrusted on the host: the
agent can replace the session transcript with a symlink to ~/.keyrelay/master.key, which a plain
`read_text()` would follow into the checkpoint, or with a FIFO that blocks the read forever.
`read_from_sandbox` refuses both.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, cast, get_args

from sqlalchemy.engine import make_url

from keystore.errors import InvalidInput, KeyrelayError
from keystore.settings import Settings

__all__ = [
    "DEFAULT_SYSTEM_PATHS",
    "Sandbox",
    "SandboxMode",
    "SandboxUnavailable",
    "read_from_sandbox",
    "sandbox_mode",
]

log = logging.getLogger(__name__)

SandboxMode = Literal["required", "auto", "off"]
# The sandbox's root is built from these, read-only, not `--ro-bind / /` with masks over what
# we know to be secret: an allow-list also hides what nobody listed (other users' homes, /root,
# /srv, /var with a local PostgreSQL's data files, /run with sockets and container secrets,
# /mnt, other checkouts, an env file a deployment keeps next to the service). The price: a tool
# installed elsewhere is not there unless the caller adds it (`readonly=`).
DEFAULT_SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
)
# Readable by root (the owner) even without capabilities, and of no use to an agent.
_ETC_SECRETS = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssl/private",
    "/etc/ssh/ssh_host_*key",
)
# Often symlinks into /run (systemd-resolved), which is not in the sandbox: bind their targets.
_ETC_LINKS = ("/etc/resolv.conf", "/etc/hosts", "/etc/localtime")
# Fresh, empty tmpfs inside the sandbox; the host's are hidden (Prefect's process worker writes
# its environment, tokens included, to a file under the host's /tmp).
_PRIVATE_TMP = ("/tmp", "/var/tmp")  # noqa: S108
_INSTALL_HINT = "apt-get install bubblewrap"
# --unshare-pid: a fresh /proc shows only the sandbox, not the flow-run process (nor any other).
# --cap-drop ALL: bwrap run by root keeps every capability otherwise (mount the host's disk).
# --die-with-parent: killing bwrap, or its caller dying, kills the sandbox's PID 1 and with it
#   everything in the namespace, also what a tool moved into another session or process group.
# No --new-session: with it PID 1 leaves bwrap's process group before it arms its PDEATHSIG, so
#   run_cli's group kill in the first milliseconds left the whole sandbox running, orphaned
#   (bwrap 0.8.0: 1 in 200 kills at 0-10 ms; 0 in 1000 without it). What it guards against,
#   TIOCSTI into the caller's terminal, needs a controlling terminal, and run_cli starts bwrap in
#   a session of its own, without one.
# No --unshare-net: the CLI must reach the relay on the host's 127.0.0.1.
_NAMESPACE_FLAGS = (
    "--unshare-pid",
    "--unshare-ipc",
    "--die-with-parent",
    "--cap-drop",
    "ALL",
)


class SandboxUnavailable(KeyrelayError, RuntimeError):
    """Mode "required" and bubblewrap is missing or cannot create namespaces here."""


def sandbox_mode(value: str) -> SandboxMode:
    """Validate a mode read from a setting."""
    if value in get_args(SandboxMode):
        return cast(SandboxMode, value)
    raise InvalidInput(f"sandbox: must be one of {', '.join(get_args(SandboxMode))}")


class Sandbox:
    """How a turn's command runs: under bwrap, or as it is (mode "off", or "auto" without bwrap)."""

    def __init__(
        self,
        mode: SandboxMode = "auto",
        *,
        bwrap: str | Path | None = None,
        settings: Settings | None = None,
        readonly: Sequence[str | Path] = (),
        system_paths: Sequence[str] = DEFAULT_SYSTEM_PATHS,
        probe_timeout_s: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in get_args(SandboxMode):
            raise InvalidInput(f"sandbox: must be one of {', '.join(get_args(SandboxMode))}")
        self.mode: SandboxMode = mode
        self._bwrap = str(bwrap) if bwrap is not None else None
        self._probe_timeout_s = probe_timeout_s
        self._readonly = [_real(p) for p in readonly]
        self._system_paths = tuple(system_paths)
        environ = os.environ if environ is None else environ
        settings = settings or Settings()
        # Refused as (part of) a visible directory: they are the keystore.
        self._secrets = [_real(settings.home), _real(settings.master_key_file)]
        sqlite_file = _sqlite_file(settings.resolved_database_url)
        if sqlite_file is not None:
            self._secrets.append(sqlite_file.parent)
        # Not visible, masked again when inside a visible directory.
        homes = [_real(environ.get("HOME") or Path.home()), _real(pwd.getpwuid(os.getuid()).pw_dir)]
        prefect_home = _real(environ.get("PREFECT_HOME") or homes[0] / ".prefect")
        self._hidden = list(
            dict.fromkeys([*self._secrets, prefect_home, *homes, Path(_PRIVATE_TMP[0])])
        )

    def __repr__(self) -> str:
        return f"Sandbox(mode={self.mode!r})"

    def check(self) -> str | None:
        """None when turns will run sandboxed (or mode "off"); in mode "auto" without a working
        bwrap, the warning for the run's log. Raises SandboxUnavailable in mode "required"."""
        if self.mode == "off":
            return None
        problem = self._problem()
        if problem is None:
            return None
        if self.mode == "required":
            raise SandboxUnavailable(f"sandbox required but unavailable: {problem}")
        return (
            f"the agent runs WITHOUT a sandbox ({problem}); it can read this user's "
            "files and other processes' environments. Set the sandbox mode to 'required' to "
            "refuse instead."
        )

    def wrap(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str | Path,
        writable: Sequence[str | Path] = (),
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment to run instead: unchanged when not sandboxed. `cwd` is
        writable too. Paths are resolved (symlinks): give the CLI the resolved working dir."""
        if self.mode == "off":
            return list(argv), dict(env)
        warning = self.check()
        if warning is not None:
            log.warning("%s", warning)
            return list(argv), dict(env)
        # bwrap passes its own environment through: exactly `env`, nothing of this process.
        # Not `--clearenv --setenv NAME VALUE`: argv is world-readable on the host
        # (/proc/<pid>/cmdline), the environment is not.
        return self._bwrap_argv(argv, env, cwd=_real(cwd), writable=writable), dict(env)

    def _problem(self) -> str | None:
        path = self._bwrap or shutil.which("bwrap")
        if path is None:
            return f"bubblewrap (bwrap) is not installed: {_INSTALL_HINT}"
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"bubblewrap (bwrap) is not installed at {path}: {_INSTALL_HINT}"
        return _probe(os.path.realpath(path), self._probe_timeout_s)

    def _bwrap_argv(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path,
        writable: Sequence[str | Path],
    ) -> list[str]:
        if not argv:
            raise InvalidInput("argv: empty")
        dirs = list(dict.fromkeys([cwd, *map(_real, writable)]))
        for folder in dirs:
            if not folder.is_dir():
                raise InvalidInput(f"sandbox: {folder} is not a directory")
            self._refuse(folder)
        for folder in self._readonly:
            self._refuse(folder)
        executable, executable_file = _executable(argv[0], env)
        for name in ("HOME", "TMPDIR"):
            value = env.get(name)
            if value and not _under_any(_real(value), [*dirs, *map(Path, _PRIVATE_TMP)]):
                raise InvalidInput(
                    f"sandbox: {name}={value} is not among the writable directories, "
                    "and the sandbox hides the rest"
                )
        path = self._bwrap or shutil.which("bwrap")
        assert path is not None  # check() found it
        # Every mount by depth, parents first, so a mount inside another comes after it: a
        # working directory under /tmp after the private /tmp, the mask of a hidden path inside
        # a bound directory after that directory (and before a working directory inside the
        # hidden path); at equal depth the mounts, then the masks.
        mounts: list[tuple[Path, int, list[str]]] = [
            (Path("/proc"), 0, ["--proc", "/proc"]),
            (Path("/dev"), 0, ["--dev", "/dev"]),
            *[(Path(name), 0, ["--tmpfs", name]) for name in _PRIVATE_TMP],
        ]
        roots: list[Path] = []  # bound system directories
        shown: list[Path] = []  # and the symlinks to them
        for name in self._system_paths:
            if _under_any(Path(name), self._secrets) or _real(name) in self._hidden:
                continue  # e.g. KEYRELAY_HOME=/opt: that directory is not shown at all
            if os.path.islink(name):
                mounts.append((Path(name), 0, ["--symlink", os.readlink(name), name]))
                shown.append(Path(name))
            elif os.path.isdir(name):
                mounts.append((Path(name), 0, ["--ro-bind", name, name]))
                roots.append(Path(name))
                shown.append(Path(name))
        for name in _ETC_LINKS:
            target = _real(name)
            if os.path.islink(name) and target.exists() and not _under_any(target, roots):
                mounts.append((target, 0, ["--ro-bind", str(target), str(target)]))
        for pattern in _ETC_SECRETS:
            for name in glob.glob(pattern):
                if _under_any(Path(name), roots):
                    mounts.append((Path(name), 1, _mask(Path(name))))
        # The executable keeps its path (argv[0] is what multi-call binaries dispatch on).
        if not _under_any(executable, shown):
            bind = ["--ro-bind", str(executable_file), str(executable)]
            mounts.append((executable, 0, bind))
        for folder in self._readonly:
            mounts.append((folder, 0, ["--ro-bind", str(folder), str(folder)]))
        for folder in dirs:
            mounts.append((folder, 0, ["--bind", str(folder), str(folder)]))
        visible = [*roots, *self._readonly, *dirs]
        for hidden in self._hidden:
            if hidden.exists() and any(_within(hidden, v) and hidden != v for v in visible):
                mounts.append((hidden, 1, _mask(hidden)))
        args = [path, *_NAMESPACE_FLAGS]
        for _path, _order, mount in sorted(mounts, key=lambda m: (len(m[0].parts), m[1])):
            args += mount
        return [*args, "--chdir", str(cwd), "--", *argv]

    def _refuse(self, folder: Path) -> None:
        """A visible directory must not be or contain the keystore, nor be a hidden path."""
        for secret in self._secrets:
            if _within(secret, folder):
                raise InvalidInput(
                    f"sandbox: {folder} is or contains {secret} (the keystore: KEYRELAY_HOME, "
                    "its SQLite database or master key); use a directory outside it"
                )
        if folder in self._hidden:
            raise InvalidInput(
                f"sandbox: {folder} is hidden from the agent (home, Prefect or temporary "
                "directory); use a directory inside it"
            )


def read_from_sandbox(path: str | Path, *, within: str | Path, max_bytes: int = 256 << 20) -> str:
    """The text of a regular file the agent could have written, found under `within`.

    Refuses a path that leaves `within` through a symlink, a final symlink, and anything but a
    regular file. Race-free once the turn is over: run_cli's group kill ends the sandbox's PID
    namespace, so nothing of the agent is left to swap the file between check and read."""
    folder = _real(within)
    if not _within(_real(path), folder):
        raise InvalidInput(f"sandbox: {path} leads out of {folder} (a symlink the agent made?)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: the last component is a symlink
        raise InvalidInput(f"sandbox: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"sandbox: {path} is not a regular file")
        if info.st_size > max_bytes:
            raise InvalidInput(f"sandbox: {path} is larger than {max_bytes} bytes")
        return file.read(max_bytes).decode("utf-8")


@functools.cache
def _probe(bwrap: str, timeout_s: float) -> str | None:
    """Run a trivial command with the namespaces a turn uses; None when it works."""
    command = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    command += [*_NAMESPACE_FLAGS, "--", "true"]
    try:
        done = subprocess.run(
            command,
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"bwrap did not finish a trivial command within {timeout_s:g} s"
    except OSError as exc:
        return f"bwrap cannot be run: {exc}"
    if done.returncode != 0:
        stderr = done.stderr.strip()[-500:] or f"exit code {done.returncode}"
        return (
            f"bwrap cannot create namespaces here: {stderr} (unprivileged user namespaces "
            "may be disabled: sysctl kernel.unprivileged_userns_clone, "
            "kernel.apparmor_restrict_unprivileged_userns)"
        )
    log.debug("bwrap at %s works", bwrap)
    return None


def _mask(path: Path) -> list[str]:
    if path.is_dir():
        return ["--tmpfs", str(path)]
    return ["--ro-bind", "/dev/null", str(path)]


def _executable(name: str, env: Mapping[str, str]) -> tuple[Path, Path]:
    """Where argv[0] is (as given, absolute) and the file it resolves to."""
    found = shutil.which(name, path=env.get("PATH")) if os.sep not in name else name
    if found is None or not os.path.isfile(found):
        raise InvalidInput(f"sandbox: executable {name} not found")
    return Path(os.path.abspath(found)), _real(found)


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return _real(parsed.database)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _under_any(path: Path, folders: Sequence[Path]) -> bool:
    return any(_within(path, folder) for folder in folders)
