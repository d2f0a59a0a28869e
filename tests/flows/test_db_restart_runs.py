"""Flow runs keep going while PostgreSQL drops every keystore connection they have, again and again.

`pg_terminate_backend` sends a backend what a server restart sends it (57P01, then a closed
socket), so statements of the runs' leases, renewals, responses, checkpoints and releases fail
mid-flight and pooled connections turn out dead. The runs' connections are found by an
application_name private to the test (tests/test_db_restart.py does the same to bare keystore
processes; bench/db_restart.py restarts the real server).

Real processes: `python -m deployments.serve` against the session's Prefect test server, its flow
runs on the PostgreSQL keystore, the provider emulator. Afterwards every run is Completed, the
provider served each turn exactly once (a call that succeeded is never redone because a keystore
write after it failed), no lease is left held, and the audit chain verifies."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from sqlalchemy import text
from sqlalchemy.engine import make_url

from flows.runtime import reset_flow_keystore
from keystore import MasterKey, open_keystore
from keystore.db import create_keystore_engine
from tests.conftest import TABLES
from tests.flows.support import FlowEnv, add_key, serving
from tests.test_db_restart import _terminate

pytestmark = [pytest.mark.slow]

RUNS, TURNS = 4, 5
REPLY_DELAY_S = 0.5  # each answer takes this long: kills land while turns are in flight
KILL_EVERY_S = 1.0
TAG = "kr-flows-db-restart"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@pytest.fixture
def pg_flow_env(
    flow_env: FlowEnv, pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlowEnv]:
    """flow_env on the session's PostgreSQL schema; the runs' connections carry TAG, the test's
    own do not (they are never killed)."""
    engine = create_keystore_engine(pg_schema_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    runs_url = make_url(pg_schema_url).update_query_dict({"application_name": TAG})
    runs_url_text = runs_url.render_as_string(hide_password=False)
    master = flow_env.env["KEYRELAY_MASTER_KEY"]
    monkeypatch.setenv("KEYRELAY_DATABASE_URL", runs_url_text)
    reset_flow_keystore()
    store = open_keystore(pg_schema_url, master_key=MasterKey([master.encode()]))
    env = FlowEnv(store=store, env={**flow_env.env}, emulator=flow_env.emulator, home=flow_env.home)
    env.env["KEYRELAY_DATABASE_URL"] = runs_url_text
    yield env
    for key in store.list_keys():
        store.delete_key(key.id, force=True)
    store.close()
    reset_flow_keystore()


def _start_run(index: int) -> FlowRun:
    parameters = {"prompt": f"restart run {index}", "agent": "anthropic", "steps": TURNS}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("agent-run/default")
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def _states(run_ids: list[object]) -> list[StateType | None]:
    with get_client(sync_client=True) as client:
        return [client.read_flow_run(run_id).state_type for run_id in run_ids]


def test_runs_complete_each_turn_once_while_their_database_connections_are_killed(
    pg_flow_env: FlowEnv, tmp_path: Path
) -> None:
    env = pg_flow_env
    for name in ("a", "b"):
        add_key(env, name, max_concurrency=2)
    env.emulator.admin.set_reply_delay(REPLY_DELAY_S)
    done = threading.Event()
    kills: list[int] = []  # backends killed per round

    def killer() -> None:
        while not done.wait(KILL_EVERY_S):
            kills.append(_terminate(TAG))

    with serving(env, tmp_path / "serve.log") as served:
        runs = [_start_run(i) for i in range(RUNS)]
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 240
            while True:
                states = _states([run.id for run in runs])
                if all(s in FINAL for s in states):
                    break
                assert time.monotonic() < deadline, f"runs not finished: {states}"
                time.sleep(0.5)
        finally:
            done.set()
            thread.join()
        output = served.output()
    assert states == [StateType.COMPLETED] * RUNS, output[-6000:]
    assert sum(1 for k in kills if k) >= 3, kills  # the runs really lost connections, repeatedly
    assert "retrying in" in output  # statements of the runs failed, and were retried

    served_turns = [e for e in env.emulator.admin.log() if e.status == 200]
    per_turn = Counter((e.prior_digest, e.last_user_text, e.user_turns) for e in served_turns)
    assert len(per_turn) == RUNS * TURNS
    assert [n for n in per_turn.values() if n > 1] == [], "a turn was served twice"
    assert env.store.active_leases() == []
    assert env.store.verify_audit().ok
