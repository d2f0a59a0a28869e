"""Scale-out: two Prefect process workers (separate processes, separate PREFECT_HOME and
KEYRELAY_HOME, as on two machines) share one PostgreSQL keystore and one real Prefect server.

What it shows:
- the deployment of deployments/prefect.yaml (`prefect deploy`, module-path entrypoint, no pull
  steps) runs on `prefect worker start --type process` workers started outside the repository;
- both workers execute runs, and no key (max_concurrency=1) ever serves two overlapping requests,
  although runs on both workers compete for the same two keys;
- when both keys are spent the runs defer (Scheduled/AwaitingRateLimit, worker freed); the worker
  that started a deferred run is then killed (a machine going away) and the other worker resumes
  it at the reset from the keystore checkpoint: finished turns are not sent again, the next turn
  carries the conversation, although the other worker has none of the first one's Prefect
  result cache;
- every run completes; no secret reaches the workers' output or the Prefect server's database.

Slow (about 80 s: a Prefect server, two workers, one 30 s rate-limit window). PostgreSQL must be
reachable (KEYRELAY_REQUIRE_POSTGRES=1 turns a missing server into a failure, as in CI)."""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import text

from api.emulator import EmulatorConfig, LimitRule, LogEntry, RunningEmulator, serve_emulator
from flows.checkpoint import load_checkpoint
from keystore import Keystore, MasterKey, open_keystore
from keystore.db import create_keystore_engine
from tests.scale_out.processes import PREFECT, ROOT, ChildProcess, child_env, prefect_cli
from tests.scale_out.processes import start_prefect_server as start_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POOL = "keyrelay"  # the work pool named in deployments/prefect.yaml
WORKERS = ("w1", "w2")
QUERY_S, PREFETCH_S = 1, 8  # the settings docs/scale-out.md recommends
# 3 keys x 3 requests = 9 turns per window (odd), 6 runs x 2 turns = 12: the first window ends
# with 3 turns to go, so runs defer, and since finished runs account for an even number of the 9
# turns, at least one deferred run has done 1 of its 2 turns (it must resume from its checkpoint).
KEYS, REQUESTS_PER_WINDOW, WINDOW_S = 3, 3, 30.0
RUNS, STEPS = 6, 2
WORKER_LIMIT = 3  # flow runs at once per worker: the 6 runs start on both workers, 3 each
REPLY_DELAY_S = 1.0  # every answer takes a second, so overlapping requests would show
SUBMITTING = re.compile(r"Worker '(?P<worker>[^']+)' submitting flow run '(?P<run>[0-9a-f-]{36})'")
ABORTED = re.compile(r"Aborted submission of flow run '(?P<run>[0-9a-f-]{36})'")


@pytest.fixture
def keystore_url(pg_schema_url: str) -> Iterator[str]:
    """The session's PostgreSQL schema, emptied (the same database for both workers)."""
    engine = create_keystore_engine(pg_schema_url)
    with engine.begin() as conn:
        tables = conn.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> 'alembic_version'"
            )
        ).scalars()
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield pg_schema_url


def _submissions(workers: dict[str, ChildProcess]) -> dict[str, list[str]]:
    """flow run id -> the workers that ran it, in order, from the workers' own logs. Both workers
    may try to submit the same run; the server lets one move it to Pending and the other logs
    "Aborted submission": those attempts do not count."""
    found: list[tuple[str, str, str]] = []  # (time of day, run, worker)
    for process in workers.values():
        for line in process.output().splitlines():
            if match := SUBMITTING.search(line):
                found.append((line[:12], match["run"], match["worker"]))
            elif match := ABORTED.search(line):
                worker = process.name.split()[-1]
                attempt = max(i for i, f in enumerate(found) if f[1:] == (match["run"], worker))
                del found[attempt]
    by_run: dict[str, list[str]] = defaultdict(list)
    for _at, run, worker in sorted(found):
        by_run[run].append(worker)
    return dict(by_run)


def _submitted_events(api_url: str) -> dict[str, list[str]]:
    """flow run id -> the workers the server recorded submitting it (`prefect.worker.submitted-
    flow-run` events, oldest first): the record of who resumed what, visible in the UI too."""
    body = {
        "filter": {"event": {"name": ["prefect.worker.submitted-flow-run"]}, "order": "ASC"},
        "limit": 50,
    }
    events = httpx.post(f"{api_url}/events/filter", json=body, timeout=10).json()["events"]
    by_run: dict[str, list[str]] = defaultdict(list)
    for event in events:
        worker = event["resource"]["prefect.resource.id"].rsplit(".", 1)[1]
        for related in event["related"]:
            if related["prefect.resource.role"] == "flow-run":
                by_run[related["prefect.resource.id"].rsplit(".", 1)[1]].append(worker)
    return dict(by_run)


def _deferred(run: FlowRun) -> bool:
    return run.state_type == StateType.SCHEDULED and run.state_name == "AwaitingRateLimit"


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def _wait_runs(client: Any, ids: list[Any], done: Any, timeout_s: float, what: str) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [client.read_flow_run(i) for i in ids]
        if all(done(r) for r in runs):
            return runs
        if time.monotonic() > deadline:
            states = [f"{r.name}: {r.state_type} {r.state_name}" for r in runs]
            raise AssertionError(f"{what}: {states}")
        time.sleep(0.3)


def _overlaps(log: list[LogEntry]) -> list[tuple[LogEntry, LogEntry]]:
    """Pairs of requests one key was serving at the same time."""
    found = []
    by_key: dict[str | None, list[LogEntry]] = defaultdict(list)
    for entry in log:
        by_key[entry.key_fingerprint].append(entry)
    for entries in by_key.values():
        entries.sort(key=lambda e: e.at)
        for before, after in itertools.pairwise(entries):
            if after.at < (before.answered_at or before.at):
                found.append((before, after))
    return found


def test_two_workers_share_one_postgres_keystore(keystore_url: str, tmp_path: Path) -> None:
    master = Fernet.generate_key().decode()
    store = open_keystore(keystore_url, master_key=MasterKey([master.encode()]))
    secrets = [f"sk-ant-api03-k{i}-{uuid.uuid4().hex}SECRET" for i in range(KEYS)]
    for i, secret in enumerate(secrets):
        store.add_key(name=f"k{i}", provider="anthropic", secret=secret, max_concurrency=1)
    store.update_config(inline_wait_max_s=2)  # a 30 s reset is deferred, not waited for inline
    limits = [
        LimitRule(key_prefix="sk-ant-api03-", requests=REQUESTS_PER_WINDOW, window_s=WINDOW_S)
    ]
    started: list[ChildProcess] = []
    server_home = tmp_path / "server"
    server_home.mkdir()
    config = EmulatorConfig(limits=limits, reply_delay_s=REPLY_DELAY_S)
    with serve_emulator(config) as emulator:
        try:
            server, api_url = start_server(server_home, tmp_path / "server.log")
            started.append(server)
            cli_env = child_env(PREFECT_HOME=str(tmp_path / "cli"), PREFECT_API_URL=api_url)
            prefect_cli(["work-pool", "create", POOL, "--type", "process"], env=cli_env)
            prefect_cli(
                ["deploy", "--prefect-file", "deployments/prefect.yaml", "--all", "--no-prompt"],
                env=cli_env,
                cwd=ROOT,
            )
            workers: dict[str, ChildProcess] = {}
            for name in WORKERS:
                machine = tmp_path / name  # its own PREFECT_HOME, KEYRELAY_HOME and cwd
                machine.mkdir()
                env = child_env(
                    PREFECT_HOME=str(machine / "prefect"),
                    PREFECT_API_URL=api_url,
                    PREFECT_WORKER_QUERY_SECONDS=str(QUERY_S),
                    PREFECT_WORKER_PREFETCH_SECONDS=str(PREFETCH_S),
                    KEYRELAY_HOME=str(machine / "keyrelay"),
                    KEYRELAY_DATABASE_URL=keystore_url,
                    KEYRELAY_MASTER_KEY=master,
                    ANTHROPIC_BASE_URL=emulator.base_url,
                )
                args = [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
                args += ["--name", name, "--limit", str(WORKER_LIMIT)]
                workers[name] = ChildProcess.start(
                    f"worker {name}", args, env=env, cwd=machine, log=tmp_path / f"{name}.log"
                )
                started.append(workers[name])
            for name, worker in workers.items():
                worker.wait_for_output(f"Worker '{name}' started!", 60)
            _scenario(store, api_url, workers, emulator, secrets)
        finally:
            for process in reversed(started):
                process.stop()
            store.close()
    databases = list(server_home.glob("*.db*"))  # the server's SQLite database, WAL included
    assert databases
    for path in databases:
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), f"a secret is in {path.name}"


def _scenario(
    store: Keystore,
    api_url: str,
    workers: dict[str, ChildProcess],
    emulator: RunningEmulator,
    secrets: list[str],
) -> None:
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        deployment = client.read_deployment_by_name("agent-run/default")
        assert deployment.entrypoint == "flows.agent_run.agent_run"
        assert deployment.pull_steps == []
        ids = [
            client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "prompt": _turn_text(i, 1),
                    "agent": "anthropic",
                    "steps": STEPS,
                    "followups": [_turn_text(i, t) for t in range(2, STEPS + 1)],
                    "run_label": f"run {i}",
                },
            ).id
            for i in range(RUNS)
        ]

        # Phase 1, both workers up: every run either finishes in the first window or parks.
        parked = _wait_runs(client, ids, lambda r: _final(r) or _deferred(r), 90, "not parked")
        deferred = [r for r in parked if _deferred(r)]
        assert deferred, "no run deferred"
        assert all(r.infrastructure_pid is None for r in deferred)  # nothing holds them
        first = _submissions(workers)
        starters = Counter(first[str(i)][0] for i in ids)
        assert set(starters) == set(WORKERS), f"one worker did all the work: {starters}"

        # Stop the worker that started a waiting run which has a turn done, well before the run
        # is due (prefetch included): only the other worker can pick it up, without that
        # worker's Prefect home (result cache) but with the keystore's checkpoint.
        done_before = {str(r.id): load_checkpoint(store, str(r.id)).turns_done for r in deferred}
        moved = max(deferred, key=lambda r: done_before[str(r.id)])
        assert done_before[str(moved.id)] >= 1, done_before
        gone = first[str(moved.id)][0]
        (survivor,) = set(WORKERS) - {gone}
        due = min(r.next_scheduled_start_time for r in deferred if r.next_scheduled_start_time)
        margin_s = due.timestamp() - time.time() - PREFETCH_S
        assert margin_s > 2, f"runs parked too late to force a hand-over ({margin_s:.1f} s)"
        stopping_at = time.time()
        # Killed, not stopped: a Prefect process worker told to stop (SIGTERM) went on polling
        # for seconds in CI, claimed the parked runs at their prefetch and took them down with
        # it (Crashed, "aborted by Python system exit call"); keyrelay's crash automation
        # resumes such runs (tests/flows/test_crash_recovery.py), which this test does not apply.
        workers[gone].kill()
        stopped_at = time.time()

        # Phase 2: the survivor resumes every waiting run at the reset.
        done = _wait_runs(client, ids, _final, WINDOW_S + 90, "runs did not finish")
        assert [r.state_type for r in done] == [StateType.COMPLETED] * RUNS, [
            f"{r.name}: {r.state_name} {r.state.message if r.state else ''}" for r in done
        ]

    # Who ran what: the workers' logs and the server's events agree.
    runs = _submissions(workers)
    deadline = time.monotonic() + 15
    while (events := _submitted_events(api_url)) != runs and time.monotonic() < deadline:
        time.sleep(0.5)
    assert events == runs
    for run in deferred:
        submitted = runs[str(run.id)]
        assert len(submitted) >= 2 and submitted[1:] == [survivor] * (len(submitted) - 1), runs
    assert runs[str(moved.id)][:2] == [gone, survivor]
    by_id = {str(r.id): r for r in done}
    for run_id, submitted in runs.items():
        assert by_id[run_id].run_count == len(submitted)  # one execution per submission

    # No key ever served two requests at once, and no window was served beyond its limit.
    log = emulator.admin.log()
    assert not _overlaps(log), _overlaps(log)
    assert all(b.served_over_limit == 0 for b in emulator.admin.buckets())
    assert {e.key_fingerprint for e in log} == {k.fingerprint for k in store.list_keys()}

    # Every turn was served exactly once and carried the conversation so far: the handed-over
    # run's turn 2 went out from the survivor with turn 1 (done on the stopped worker) in it.
    served = [e for e in log if e.status == 200]
    texts = Counter(e.last_user_text for e in served)
    assert texts == Counter(_turn_text(i, t) for i in range(RUNS) for t in range(1, STEPS + 1))
    assert all(e.user_turns == int((e.last_user_text or "").rsplit(" ", 1)[1]) for e in served)
    moved_index = ids.index(moved.id)
    resumed_turn = next(
        e
        for e in served
        if e.last_user_text == _turn_text(moved_index, done_before[str(moved.id)] + 1)
    )
    assert resumed_turn.at > stopping_at and resumed_turn.user_turns >= 2
    assert {e.status for e in log} <= {200, 429}

    waits = store.audit_events(type="pool_waiting", limit=1000)
    resumed = store.audit_events(type="pool_resumed", limit=1000)
    assert {e.run_id for e in waits} == {str(r.id) for r in deferred}
    assert len(resumed) == len(waits)
    assert not [k for k in store.status().keys if k.active_leases]

    for worker in workers.values():
        assert not any(s in worker.output() for s in secrets)

    # Which workers' runs each key served (a run's turns before its deferral ran on its starter).
    names = {k.fingerprint: k.name for k in store.list_keys()}
    key_workers: dict[str, set[str]] = defaultdict(set)
    for entry in served:
        _, index, _, turn = (entry.last_user_text or "").split()
        submitted = runs[str(ids[int(index)])]
        before = done_before.get(str(ids[int(index)]), STEPS)
        key_workers[names.get(entry.key_fingerprint or "", "?")].add(
            submitted[0] if int(turn) <= before else submitted[-1]
        )
    print(
        "\nscale-out:",
        {
            "runs started per worker": dict(starters),
            "submissions per worker": dict(Counter(w for s in runs.values() for w in s)),
            "deferred runs (workers in order, turns done)": {
                str(r.id)[:8]: (runs[str(r.id)], done_before[str(r.id)]) for r in deferred
            },
            "stopped worker": gone,
            "hand-over margin s": round(margin_s, 1),
            "worker kill took s": round(stopped_at - stopping_at, 1),
            "requests": dict(Counter(e.status for e in log)),
            "workers per key": {k: sorted(v) for k, v in key_workers.items()},
        },
    )


def _turn_text(run: int, turn: int) -> str:
    return f"run {run} turn {turn}"
