"""Locate, or install once, the real `claude` CLI (npm `@anthropic-ai/claude-code`).

Order: `KEYRELAY_CLAUDE_BIN` (used as given, never installed over); else the pinned version in
a cache outside git (`KEYRELAY_CLAUDE_CACHE`, default `~/.cache/keyrelay/claude-code`), laid
out as `<cache>/<version>/node_modules/...`, installed with npm when missing.

An install is ~400 MB (the npm package ships a native binary per platform), so two test
processes must not run it at once: installs hold an exclusive `flock` on `<cache>/.install.lock`
(and a thread lock, for threads of one process), build in a staging directory and rename it into
place only after the binary answered `--version`, so a killed install never leaves a half tree
that later callers would take for a good one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from keystore.errors import KeyrelayError

__all__ = [
    "CLAUDE_CODE_PACKAGE",
    "CLAUDE_CODE_VERSION",
    "ClaudeBinaryUnavailable",
    "claude_cache_dir",
    "ensure_claude_bin",
    "find_claude_bin",
]

CLAUDE_CODE_PACKAGE = "@anthropic-ai/claude-code"
# Pinned: api/emulator/CLAUDE_CLI_NOTES.md was verified against this version.
CLAUDE_CODE_VERSION = "2.1.332"
_MARKER = ".keyrelay-installed"  # holds the executable's path relative to the version dir
_STUB_MAX_BYTES = 1 << 20  # the wrapper's placeholder is tiny; the real binary is ~400 MB
_thread_lock = threading.Lock()

Runner = Callable[..., subprocess.CompletedProcess[str]]


class ClaudeBinaryUnavailable(KeyrelayError, RuntimeError):
    """The `claude` CLI is not there and could not be installed."""


def claude_cache_dir(*, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    configured = env.get("KEYRELAY_CLAUDE_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "keyrelay" / "claude-code"


def find_claude_bin(
    *, version: str = CLAUDE_CODE_VERSION, env: Mapping[str, str] | None = None
) -> Path | None:
    """The executable if it is already there (override or complete install), else None."""
    env = os.environ if env is None else env
    override = env.get("KEYRELAY_CLAUDE_BIN")
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ClaudeBinaryUnavailable(f"KEYRELAY_CLAUDE_BIN={path} is not an executable file")
        return path
    marker = claude_cache_dir(env=env) / version / _MARKER
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if path.is_file() else None


def ensure_claude_bin(
    *,
    version: str = CLAUDE_CODE_VERSION,
    env: Mapping[str, str] | None = None,
    npm: str = "npm",
    timeout_s: float = 900.0,
    runner: Runner = subprocess.run,
) -> Path:
    """The path of the `claude` executable, installing the pinned version when missing."""
    found = find_claude_bin(version=version, env=env)
    if found is not None:
        return found
    cache = claude_cache_dir(env=env)
    with _install_lock(cache):
        # Another process may have finished the install while this one waited for the lock.
        found = find_claude_bin(version=version, env=env)
        if found is not None:
            return found
        return _install(cache=cache, version=version, npm=npm, timeout_s=timeout_s, runner=runner)


@contextmanager
def _install_lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with _thread_lock, open(cache / ".install.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _install(*, cache: Path, version: str, npm: str, timeout_s: float, runner: Runner) -> Path:
    npm_path = shutil.which(npm)
    if npm_path is None:
        raise ClaudeBinaryUnavailable(
            f"cannot install {CLAUDE_CODE_PACKAGE}: `{npm}` not found (install Node.js and npm, "
            "or point KEYRELAY_CLAUDE_BIN at a claude executable)"
        )
    target = cache / version
    staging = cache / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        npm_path,
        "install",
        "--prefix",
        str(staging),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        f"{CLAUDE_CODE_PACKAGE}@{version}",
    ]
    try:
        result = runner(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:
            raise ClaudeBinaryUnavailable(
                f"`npm install {CLAUDE_CODE_PACKAGE}@{version}` failed "
                f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        executable = _native_executable(staging)
        _check_version(executable, version=version, runner=runner)
        (staging / _MARKER).write_text(str(executable.relative_to(staging)))
        # A leftover without a marker is a failed older attempt: never trusted, replaced.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except subprocess.TimeoutExpired as exc:
        raise ClaudeBinaryUnavailable(f"npm install timed out after {timeout_s:g} s") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / executable.relative_to(staging)


def _native_executable(prefix: Path) -> Path:
    """The real binary: the wrapper's `bin/claude.exe` once its postinstall replaced the stub,
    else the platform package's binary (when npm ran without install scripts)."""
    scope = prefix / "node_modules" / "@anthropic-ai"
    wrapper = scope / "claude-code" / "bin" / "claude.exe"
    if wrapper.is_file() and wrapper.stat().st_size > _STUB_MAX_BYTES:
        return wrapper
    for candidate in sorted(scope.glob("claude-code-*/claude")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ClaudeBinaryUnavailable(
        f"{CLAUDE_CODE_PACKAGE} installed without a native binary for this platform"
    )


def _check_version(executable: Path, *, version: str, runner: Runner) -> None:
    result = runner([str(executable), "--version"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 or not result.stdout.strip().startswith(version):
        raise ClaudeBinaryUnavailable(
            f"{executable} --version said {result.stdout.strip()!r} (exit {result.returncode}), "
            f"expected {version}"
        )


# `python -m flows.executors.claude_bin` prints the executable's path, installing it if needed.
if __name__ == "__main__":
    try:
        print(ensure_claude_bin())
    except ClaudeBinaryUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
