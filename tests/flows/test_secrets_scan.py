"""After the flow tests ran (rotations, deferrals, fallbacks, failures), no key's secret is in
Prefect's database (runs, parameters, states, task inputs and results, logs, events, artifacts),
in Prefect's result storage, or in the captured logs. Runs last in tests/flows (file order)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prefect.settings import PREFECT_HOME

from api.emulator import LimitRule
from flows.agent_run import agent_run
from flows.errors import RunFailed
from tests.flows.support import SECRETS, FlowEnv, PrefectServer, add_key

pytestmark = pytest.mark.anyio


def _database_text(path: Path) -> str:
    chunks: list[str] = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                chunks.append(" ".join(repr(v) for v in row))
    return "\n".join(chunks)


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


async def test_no_secret_reaches_prefect(
    flow_env: FlowEnv, prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    add_key(flow_env, "a", priority=1)
    add_key(flow_env, "b", priority=2)
    flow_env.store.update_config(inline_wait_max_s=1, max_wait_s=2)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=60)]
    )
    await agent_run(prompt="rotate", agent="anthropic", steps=2)
    with pytest.raises(RunFailed):
        await agent_run(prompt="exhaust", agent="anthropic", steps=1)
    assert len(SECRETS) >= 2
    places = {
        "prefect database": _database_text(prefect_server.database),
        "prefect home (results, logs)": _files_text(Path(str(PREFECT_HOME.value()))),
        "captured logs": caplog.text,
    }
    assert "rotate" in places["prefect database"]  # the scan does see run data
    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked into the {where}"
            assert secret[-20:] not in text, f"a secret's tail leaked into the {where}"
