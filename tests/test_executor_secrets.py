"""The leased secret reaches the provider and nothing else: not the parent's environment (before,
during or after a turn), not a log line at DEBUG, not a result, checkpoint or exception.

Each agent against the emulator; claude-code with the real CLI (slow).
"""

from __future__ import annotations

import logging
import os
import pickle
import traceback
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from api.emulator import EmulatorConfig, KeyMatch, RunningEmulator, serve_emulator
from flows.executors.base import Executor, TurnResult, executor_for
from flows.executors.claude_bin import ClaudeBinaryUnavailable, ensure_claude_bin
from flows.executors.errors import KeyRejected
from keystore import Keystore
from tests.executors.helpers import api_key, leased, oauth_token, openai_key

pytest_plugins = ["tests.executors.fixtures"]
pytestmark = pytest.mark.anyio
AGENTS = [
    pytest.param("anthropic", id="anthropic"),
    pytest.param("openai", id="openai"),
    pytest.param("claude-code", id="claude-code-real-cli", marks=pytest.mark.slow),
]
SECRETS = {
    "anthropic": lambda: api_key("hygiene"),
    "openai": lambda: openai_key("hygiene"),
    "claude-code": lambda: oauth_token("hygiene"),
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    accepted = [KeyMatch(key_prefix=p) for p in ("sk-ant-api03-", "sk-ant-oat01-", "sk-proj-")]
    with serve_emulator(EmulatorConfig(accepted_keys=accepted)) as running:
        yield running


def make_executor(agent: str, emu: RunningEmulator) -> Executor:
    if agent == "openai":
        return executor_for(agent, base_url=emu.openai_base_url)
    if agent == "claude-code":
        try:
            claude_bin = ensure_claude_bin()
        except ClaudeBinaryUnavailable as exc:
            pytest.fail(f"the real claude CLI is required and is missing: {exc}")
        return executor_for(agent, base_url=emu.base_url, claude_bin=claude_bin)
    return executor_for(agent, base_url=emu.base_url)


def in_environ(secret: str) -> bool:
    return any(secret in value for value in os.environ.values())


def processes_holding(secret: str) -> list[int]:
    """Live processes whose environment holds the secret (children that outlived their turn)."""
    holders = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if secret.encode() in environ.read_bytes():
                holders.append(int(environ.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return holders


@pytest.mark.parametrize("agent", AGENTS)
async def test_the_secret_stays_out_of_environ_logs_results_and_errors(
    agent: str, emulator: RunningEmulator, keystore: Keystore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    executor = make_executor(agent, emulator)
    secret = SECRETS[agent]()
    rejected = "sk-revoked-" + secret
    polls, sightings = 0, 0
    finished = anyio.Event()

    async def watch_environ() -> None:
        nonlocal polls, sightings
        while not finished.is_set():
            polls += 1
            sightings += in_environ(secret) or in_environ(rejected)
            await anyio.sleep(0.002)

    assert not in_environ(secret)
    with leased(keystore, agent, secret) as lease:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch_environ)
            first = await executor.run_turn(lease, prompt="hello", model=None, checkpoint=None)
            assert isinstance(first, TurnResult)
            second = await executor.run_turn(
                lease, prompt="again", model=None, checkpoint=first.checkpoint
            )
            finished.set()
    with leased(keystore, agent, rejected) as lease, pytest.raises(KeyRejected) as caught:
        await executor.run_turn(lease, prompt="hello", model=None, checkpoint=None)

    assert polls >= 3 and sightings == 0  # watched while the turns ran, never seen
    assert not in_environ(secret) and not in_environ(rejected)
    assert processes_holding(secret) == [] and processes_holding(rejected) == []
    assert caplog.records  # DEBUG logging was on and captured something
    for text in (caplog.text, *(repr(r.args) for r in caplog.records)):
        assert secret not in text and rejected not in text
    assert isinstance(first, TurnResult) and isinstance(second, TurnResult)
    for result in (first, second):
        assert secret not in repr(result) and secret not in str(result.checkpoint)
    error = caught.value
    rendered = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), rendered):
        assert rejected not in text
    assert rejected.encode() not in pickle.dumps(error)
