"""Locating and installing the claude CLI, with a fake `npm` (a real script, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.executors.claude_bin import (
    CLAUDE_CODE_VERSION,
    ClaudeBinaryUnavailable,
    claude_cache_dir,
    ensure_claude_bin,
    find_claude_bin,
)

# Lays out what the real package does when npm skips install scripts: the wrapper's tiny
# placeholder plus the platform package's binary. Records each run; `FAKE_NPM_MODE` scripts
# failures.
FAKE_NPM = textwrap.dedent(
    """\
    #!/bin/sh
    echo "$*" >> "$FAKE_NPM_LOG"
    [ "$FAKE_NPM_MODE" = fail ] && { echo "npm ERR! 404 Not Found" >&2; exit 1; }
    prefix=$3; spec=$(eval echo \\${$#}); version=${spec##*@}
    [ "$FAKE_NPM_MODE" = wrong_version ] && version=0.0.1
    scope="$prefix/node_modules/@anthropic-ai"; native="$scope/claude-code-linux-x64/claude"
    mkdir -p "$scope/claude-code/bin" "$scope/claude-code-linux-x64"
    echo "placeholder" > "$scope/claude-code/bin/claude.exe"
    printf '#!/bin/sh\\necho "%s (Claude Code)"\\n' "$version" > "$native"
    chmod +x "$native"
    sleep "${FAKE_NPM_SLEEP:-0}"
    """
)


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir()
    script.write_text(FAKE_NPM)
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_NPM_LOG", str(tmp_path / "npm.log"))
    monkeypatch.setenv("KEYRELAY_CLAUDE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KEYRELAY_CLAUDE_BIN", raising=False)
    return script


def npm_runs(tmp_path: Path) -> list[str]:
    log = tmp_path / "npm.log"
    return log.read_text().splitlines() if log.exists() else []


def test_cache_dir_defaults_outside_the_repository() -> None:
    assert claude_cache_dir(env={}) == Path.home() / ".cache" / "keyrelay" / "claude-code"
    assert claude_cache_dir(env={"KEYRELAY_CLAUDE_CACHE": "/x/y"}) == Path("/x/y")


def test_override_is_used_as_given_and_must_be_executable(tmp_path: Path) -> None:
    binary = tmp_path / "claude"
    binary.write_text("#!/bin/sh\n")
    with pytest.raises(ClaudeBinaryUnavailable, match="not an executable"):
        find_claude_bin(env={"KEYRELAY_CLAUDE_BIN": str(binary)})
    binary.chmod(0o755)
    assert ensure_claude_bin(env={"KEYRELAY_CLAUDE_BIN": str(binary)}) == binary


def test_installs_once_into_a_version_directory(tmp_path: Path, fake_npm: Path) -> None:
    assert find_claude_bin() is None
    path = ensure_claude_bin(npm=str(fake_npm))
    version_dir = tmp_path / "cache" / CLAUDE_CODE_VERSION
    assert path == version_dir / "node_modules/@anthropic-ai/claude-code-linux-x64/claude"
    assert subprocess.run([path, "--version"], capture_output=True, text=True).stdout.startswith(
        CLAUDE_CODE_VERSION
    )
    (run,) = npm_runs(tmp_path)
    assert f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}" in run and "--prefix" in run
    assert ensure_claude_bin(npm=str(fake_npm)) == path and find_claude_bin() == path
    assert len(npm_runs(tmp_path)) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".staging")] == []


def test_two_processes_install_only_once(
    tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_SLEEP", "0.5")
    code = (
        "from flows.executors.claude_bin import ensure_claude_bin; "
        f"print(ensure_claude_bin(npm={str(fake_npm)!r}))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs[0] == outputs[1] and Path(outputs[0]).is_file()
    assert len(npm_runs(tmp_path)) == 1


def test_a_failed_install_leaves_nothing_behind(
    tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_MODE", "fail")
    with pytest.raises(ClaudeBinaryUnavailable, match="404 Not Found"):
        ensure_claude_bin(npm=str(fake_npm))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".install.lock"]
    monkeypatch.setenv("FAKE_NPM_MODE", "wrong_version")
    with pytest.raises(ClaudeBinaryUnavailable, match="expected"):
        ensure_claude_bin(npm=str(fake_npm))
    assert find_claude_bin() is None


def test_no_npm_says_what_to_do(fake_npm: Path) -> None:
    with pytest.raises(ClaudeBinaryUnavailable, match="KEYRELAY_CLAUDE_BIN"):
        ensure_claude_bin(npm="/nonexistent/npm")
