"""claude-code jobs: their parameters, where they work, and the key a run keeps (fast: no CLI)."""

from __future__ import annotations

import asyncio
import platform
from pathlib import Path

import pytest

from flows.agent_run import agent_run
from flows.errors import RunFailed
from flows.job import AgentJob
from flows.workdir import default_workdir, prepare_workdir, snapshot_for_deferral
from keystore import InvalidInput
from tests.flows.support import FlowEnv, add_key

pytestmark = pytest.mark.anyio


async def test_job_options_are_refused_for_the_api_agents(flow_env: FlowEnv) -> None:
    add_key(flow_env, "a")
    with pytest.raises(InvalidInput, match="allowed_tools, workdir: only the claude-code agent"):
        await agent_run(prompt="go", agent="anthropic", workdir="/tmp", allowed_tools=["Bash"])
    assert flow_env.emulator.admin.log() == []


async def test_a_missing_workdir_names_the_path_and_the_machine(flow_env: FlowEnv) -> None:
    add_key(flow_env, "a", provider="claude-code")
    missing = flow_env.home.parent / "no-such-repo"
    with pytest.raises(InvalidInput) as refused:
        await agent_run(prompt="go", agent="claude-code", workdir=str(missing))
    assert str(missing) in str(refused.value) and platform.node() in str(refused.value)
    with pytest.raises(InvalidInput, match="must be an absolute path"):
        await agent_run(prompt="go", agent="claude-code", workdir="relative/dir")


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"permission_mode": "yolo"}, "permission_mode"),
        ({"max_turns": 0}, "max_turns"),
        ({"allowed_tools": ["--dangerously-skip-permissions"]}, "not a tool rule"),
        ({"add_dirs": ["/no/such/dir"]}, "add_dirs: /no/such/dir does not exist"),
    ],
)
def test_job_options_are_validated(options: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        AgentJob.of(**options).check_dirs()


def test_job_options_become_cli_flags(tmp_path: Path) -> None:
    job = AgentJob.of(
        allowed_tools=["Bash(git:*)", "Edit"],
        disallowed_tools=["WebFetch"],
        permission_mode="acceptEdits",
        append_system_prompt="Be brief.",
        max_turns=30,
        add_dirs=[str(tmp_path)],
    )
    assert job.to_cli_args() == [
        "--allowedTools", "Bash(git:*)", "Edit",
        "--disallowedTools", "WebFetch",
        "--permission-mode", "acceptEdits",
        "--append-system-prompt", "Be brief.",
        "--max-turns", "30",
        "--add-dir", str(tmp_path.resolve()),
    ]  # fmt: skip
    assert AgentJob.of(allowed_tools=None, workdir=None) == AgentJob()


def test_a_default_workdir_follows_a_deferred_run_to_another_worker(
    flow_env: FlowEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = AgentJob()
    monkeypatch.setenv("KEYRELAY_RUNS_DIR", str(tmp_path / "worker-a"))
    here = prepare_workdir(flow_env.store, "run-1", job, resuming=False)
    assert here == (tmp_path / "worker-a" / "run-1").resolve()
    assert not str(here).startswith(str(flow_env.home))  # never next to the keystore
    (here / "notes").mkdir()
    (here / "notes" / "a.txt").write_text("step1\n")
    (here / "link").symlink_to("notes/a.txt")
    snapshot_for_deferral(flow_env.store, "run-1", job)

    monkeypatch.setenv("KEYRELAY_RUNS_DIR", str(tmp_path / "worker-b"))  # another machine
    there = prepare_workdir(flow_env.store, "run-1", job, resuming=True)
    assert there == (tmp_path / "worker-b" / "run-1").resolve()
    assert (there / "notes" / "a.txt").read_text() == "step1\n"
    assert (there / "link").is_symlink() and (there / "link").read_text() == "step1\n"
    assert default_workdir("run-1") == tmp_path / "worker-b" / "run-1"

    with pytest.raises(RunFailed, match="will not resume in an empty directory"):
        prepare_workdir(flow_env.store, "run-2", job, resuming=True)


def test_a_workdir_over_the_snapshot_cap_fails_the_deferral(
    flow_env: FlowEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYRELAY_RUNS_DIR", str(tmp_path))
    flow_env.store.update_config(workdir_snapshot_max_mb=1)
    folder = prepare_workdir(flow_env.store, "big", AgentJob(), resuming=False)
    (folder / "blob").write_bytes(b"x" * (2 << 20))
    with pytest.raises(RunFailed, match="more than 1 MB"):
        snapshot_for_deferral(flow_env.store, "big", AgentJob())
    assert flow_env.store.load_snapshot("big") is None


async def test_a_run_that_is_not_limited_keeps_its_key(flow_env: FlowEnv) -> None:
    keys = [add_key(flow_env, name) for name in ("a", "b", "c")]
    result = await agent_run(prompt="go", agent="anthropic", steps=4)
    used = {t["key_id"] for t in result["turns"]}
    assert len(used) == 1 and used <= set(keys)  # one organisation's prompt cache, all along


async def test_parallel_runs_start_on_distinct_keys(flow_env: FlowEnv) -> None:
    for name in ("a", "b"):
        add_key(flow_env, name, max_concurrency=2)
    flow_env.emulator.admin.set_reply_delay(0.3)
    results = await asyncio.gather(
        agent_run(prompt="one", agent="anthropic", steps=2),
        agent_run(prompt="two", agent="anthropic", steps=2),
    )
    firsts = [r["turns"][0]["key_id"] for r in results]
    assert len(set(firsts)) == 2
    for result in results:  # and each keeps its own
        assert len({t["key_id"] for t in result["turns"]}) == 1
