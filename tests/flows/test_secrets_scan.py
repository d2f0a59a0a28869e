"""After the flow tests ran (rotations, deferrals, fallbacks, failures), no key's secret is in
Prefect's database (runs, parameters, states, task inputs and results, logs, events, artifacts),
in Prefect's result storage, or in the captured logs. Runs last in tests/flows (file order)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.settings import PREFECT_HOME

from api.emulator import LimitRule
from flows.agent_run import agent_run
from flows.errors import RunFailed
from tests.flows.support import SECRETS, FlowEnv, PrefectServer, add_key, database_text, files_text

pytestmark = pytest.mark.anyio


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
        "prefect database": database_text(prefect_server.database),
        "prefect home (results, logs)": files_text(Path(str(PREFECT_HOME.value()))),
        "captured logs": caplog.text,
    }
    assert "rotate" in places["prefect database"]  # the scan does see run data
    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked into the {where}"
            assert secret[-20:] not in text, f"a secret's tail leaked into the {where}"
