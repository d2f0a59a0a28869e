"""The agent must not reach the keys: real `agent-run` turns with the REAL `claude` CLI, in the
sandbox, through the per-turn relay, on a PostgreSQL keystore whose URL carries a password.

The emulator plays the agent: its tool calls dump what the agent can see (its environment, every
process environment it can read, every file under its home, config dir, working directory and
KEYRELAY_HOME) into files of the working directory, which the test then searches for secrets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from api.emulator import AgentScript, LimitRule, ToolStep, fingerprint
from flows.agent_run import agent_run
from flows.errors import RunFailed
from flows.executors.claude_bin import ensure_claude_bin
from flows.runtime import reset_flow_keystore
from keystore import MasterKey, open_keystore
from keystore.db import create_keystore_engine
from tests.conftest import TABLES
from tests.flows.support import SECRETS, FlowEnv

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def pg_env(
    flow_env: FlowEnv, pg_schema_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlowEnv]:
    """flow_env on PostgreSQL, with a password in the URL (trust auth ignores it), a master key
    file in KEYRELAY_HOME as well as the key in the environment, and the real CLI."""
    password = f"db-password-{uuid.uuid4().hex}"
    url = pg_schema_url.replace("postgres@", f"postgres:{password}@", 1)
    master = Fernet.generate_key().decode()
    home = flow_env.home
    home.mkdir(parents=True, exist_ok=True)
    (home / "master.key").write_text(master + "\n")
    engine = create_keystore_engine(url)
    with engine.begin() as conn:  # the session's schema: start empty
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    monkeypatch.setenv("KEYRELAY_DATABASE_URL", url)
    monkeypatch.setenv("KEYRELAY_MASTER_KEY", master)
    monkeypatch.setenv("KEYRELAY_CLAUDE_BIN", str(ensure_claude_bin()))
    reset_flow_keystore()
    store = open_keystore(url, master_key=MasterKey([master.encode()]))
    env = FlowEnv(store=store, env={**flow_env.env}, emulator=flow_env.emulator, home=home)
    env.env |= {"KEYRELAY_DATABASE_URL": url, "KEYRELAY_MASTER_KEY": master, "_PW": password}
    yield env
    for key in store.list_keys():
        store.delete_key(key.id, force=True)
    store.close()
    reset_flow_keystore()


def _add(env: FlowEnv, name: str, secret: str, **fields: object) -> int:
    SECRETS.add(secret)
    return env.store.add_key(name=name, provider="claude-code", secret=secret, **fields).id  # type: ignore[arg-type]


def _looking_around(home: Path) -> AgentScript:
    """Tool calls that write down everything the agent can see, into files of its workdir."""
    look = (
        "for p in /proc/[0-9]*; do echo \"== $p\"; tr '\\0' '\\n' < $p/environ; done"
        " > seen-procs.txt 2>&1"
    )
    read_all = (
        f'find "$HOME" "$CLAUDE_CONFIG_DIR" . {home} -type f -not -name \'seen-*\''
        " 2>/dev/null | head -500 | xargs -r cat > seen-files.txt 2>&1;"
        f" ls -la {home} >> seen-files.txt 2>&1; true"
    )
    return AgentScript(
        steps=[
            ToolStep.bash("env > seen-env.txt"),
            ToolStep.bash(look),
            ToolStep.bash(read_all),
        ]
    )


@pytest.mark.parametrize(
    "secret",
    [
        f"sk-ant-api03-relay-{uuid.uuid4().hex}{uuid.uuid4().hex}",
        f"sk-ant-oat01-relay-{uuid.uuid4().hex}{uuid.uuid4().hex}",
    ],
    ids=["api-key", "subscription"],
)
async def test_the_agent_sees_no_key_no_master_key_and_no_database_password(
    pg_env: FlowEnv, tmp_path: Path, secret: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _add(pg_env, "k", secret)
    pg_env.emulator.admin.set_agent(_looking_around(pg_env.home))
    state = await agent_run(
        prompt="Look around.",
        agent="claude-code",
        workdir=str(repo),
        allowed_tools=["Bash"],
        return_state=True,
    )
    result = await state.aresult()
    assert result["turns"][0]["reply"].startswith("Done")
    seen = {p.name: p.read_text(errors="replace") for p in repo.glob("seen-*.txt")}
    assert set(seen) == {"seen-env.txt", "seen-procs.txt", "seen-files.txt"}
    assert "keyrelay-" in seen["seen-env.txt"]  # the placeholder: the agent did look
    assert "CLAUDE_CONFIG_DIR" in seen["seen-procs.txt"]
    forbidden = {
        "the key": secret,
        "the master key": pg_env.env["KEYRELAY_MASTER_KEY"],
        "the database password": pg_env.env["_PW"],
    }
    for name, content in seen.items():
        for what, value in forbidden.items():
            assert value not in content, f"{what} is readable by the agent ({name})"
    assert "master.key" not in seen["seen-files.txt"]  # KEYRELAY_HOME is not even there
    log = pg_env.emulator.admin.log()
    assert {e.key_fingerprint for e in log} == {fingerprint(secret)}  # the relay sent the key
    # and what the run keeps (the transcript in the checkpoint) holds none of it either
    checkpoint = str(pg_env.store.load_checkpoint(str(state.state_details.flow_run_id)))
    assert "seen-env.txt" in checkpoint  # the transcript is there...
    assert all(value not in checkpoint for value in forbidden.values())  # ...without them


async def test_a_429_cools_the_key_for_the_reset_the_provider_named(pg_env: FlowEnv) -> None:
    """An API-key 429: the CLI reports it without any reset, but the relay saw `retry-after`."""
    secret = f"sk-ant-api03-late-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    key = _add(pg_env, "k", secret)
    pg_env.store.update_config(auto_wait=False)
    pg_env.emulator.admin.set_agent(None)
    pg_env.emulator.admin.set_limits([LimitRule(key=secret, requests=1, window_s=25)])
    # someone else (another tool) spent the window: keyrelay has never heard from this key
    direct = httpx.post(
        f"{pg_env.emulator.base_url}/v1/messages",
        headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
        json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert direct.status_code == 200
    with pytest.raises(RunFailed, match="auto_wait is off"):
        await agent_run(prompt="go", agent="claude-code")
    (limited,) = pg_env.store.audit_events(type="key_rate_limited")
    assert limited.key_id == key and limited.details["source"] == "retry-after"
    cooled_s = (pg_env.store.get_key(key).cooling_until - limited.at).total_seconds()  # type: ignore[operator]
    assert 23 <= cooled_s <= 26  # the window's remaining time, not no_reset_cooldown_s (60)


async def test_a_spent_bucket_stops_the_next_request_of_the_same_turn_locally(
    pg_env: FlowEnv, tmp_path: Path
) -> None:
    """Key a's second answer of a tool loop says no request remains: the relay has told the
    keystore before the CLI's turn ends, so the CLI's third request is refused locally (no
    provider call), and the turn goes on from its transcript on key b."""
    repo = tmp_path / "repo"
    repo.mkdir()
    a_secret = f"sk-ant-api03-a-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    b_secret = f"sk-ant-api03-b-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    a = _add(pg_env, "a", a_secret, priority=1)
    b = _add(pg_env, "b", b_secret, priority=2)
    pg_env.emulator.admin.set_agent(AgentScript.appending_steps(3, file_name="log.txt"))
    pg_env.emulator.admin.set_limits([LimitRule(key=a_secret, requests=2, window_s=600)])
    result = await agent_run(
        prompt="Do the steps.", agent="claude-code", workdir=str(repo), allowed_tools=["Bash"]
    )
    assert result["turns"][0]["key_id"] == b
    assert (repo / "log.txt").read_text() == "step1\nstep2\nstep3\n"  # each step once
    log = pg_env.emulator.admin.log()
    assert [(e.key_fingerprint, e.status, e.tool_results) for e in log] == [
        (fingerprint(a_secret), 200, 0),
        (fingerprint(a_secret), 200, 1),
        (fingerprint(b_secret), 200, 2),  # b went on with a's two tool results
        (fingerprint(b_secret), 200, 3),
    ]
    (refused,) = pg_env.store.audit_events(type="key_refused_locally")
    assert refused.key_id == a and "requests 0 left" in refused.details["why"]
    assert pg_env.store.audit_events(type="key_rate_limited") == []  # no provider 429 at all
