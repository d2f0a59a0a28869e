"""What keyrelay's flow layer costs, against the provider emulator:

- per-step overhead: one `agent-run` turn (Prefect task, lease, renew thread, checkpoint) versus
  the same executor called directly with a lease taken by hand;
- rotation latency: from the 429 on one key to the request on the next key (emulator log);
- resume lateness: from a deferred run's reset to its resumption, under a real serve() process.

    .venv/bin/python bench/flow_overhead.py [--turns 20] [--deferrals 3] [--write]

Runs one Prefect test server (temporary home), so it takes a minute or two."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="keyrelay-bench-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from cryptography.fernet import Fernet  # noqa: E402

from api.emulator import EmulatorConfig, LimitRule, serve_emulator  # noqa: E402
from keystore import MasterKey, open_keystore  # noqa: E402


def _ms(values: list[float]) -> str:
    p90 = sorted(values)[int(len(values) * 0.9)]
    return f"{statistics.median(values) * 1000:.0f} ms (p90 {p90 * 1000:.0f})"


async def _direct_turns(store, turns: int) -> list[float]:  # type: ignore[no-untyped-def]
    from flows.executors import executor_for

    executor = executor_for("anthropic")
    times, state = [], None
    for i in range(turns):
        start = time.perf_counter()
        with store.lease(provider="anthropic", holder="bench-direct") as lease:
            outcome = await executor.run_turn(
                lease, prompt=f"turn {i}", model=None, checkpoint=state
            )
        state = outcome.checkpoint
        times.append(time.perf_counter() - start)
    return times


async def _flow_turns(turns: int) -> list[float]:
    from flows.agent_run import agent_run

    start = time.perf_counter()
    await agent_run(prompt="turn 0", agent="anthropic", steps=turns)
    return [(time.perf_counter() - start) / turns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rotations", type=int, default=10)
    parser.add_argument("--deferrals", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME
    from prefect.testing.utilities import prefect_test_harness

    from flows.runtime import reset_flow_keystore

    work = Path(tempfile.mkdtemp(prefix="keyrelay-bench-"))
    master = Fernet.generate_key().decode()
    env = {
        "KEYRELAY_HOME": str(work),
        "KEYRELAY_MASTER_KEY": master,
        "KEYRELAY_DATABASE_URL": f"sqlite:///{work / 'keystore.db'}",
    }
    os.environ.update(env)
    lines: list[str] = []
    with prefect_test_harness(server_startup_timeout=90), serve_emulator(EmulatorConfig()) as emu:
        os.environ["ANTHROPIC_BASE_URL"] = emu.base_url
        store = open_keystore(env["KEYRELAY_DATABASE_URL"], master_key=MasterKey([master.encode()]))
        for priority, name in enumerate(("a", "b")):  # a preferred: its limit forces rotations
            store.add_key(
                name=name,
                provider="anthropic",
                priority=priority,
                secret=f"sk-ant-api03-{name}-" + "x" * 40,
            )
        reset_flow_keystore()

        asyncio.run(_direct_turns(store, 3))  # warm up imports and connections
        direct = asyncio.run(_direct_turns(store, args.turns))
        asyncio.run(_flow_turns(3))
        per_flow_turn = [asyncio.run(_flow_turns(args.turns))[0] for _ in range(3)]
        lines.append(f"| one turn, executor called directly (lease by hand) | {_ms(direct)} |")
        lines.append(
            f"| one turn inside agent-run (task, lease, checkpoint) | "
            f"{statistics.median(per_flow_turn) * 1000:.0f} ms (mean over {args.turns}-turn runs) |"
        )
        overhead = statistics.median(per_flow_turn) - statistics.median(direct)
        lines.append(f"| flow overhead per turn | {overhead * 1000:.0f} ms |")

        # rotation latency: key a allows one request per minute, every second turn rotates
        from flows.agent_run import agent_run

        gaps = []
        for _ in range(args.rotations):
            emu.admin.reset(restore_config=True)
            for key in store.list_keys("anthropic"):
                store.reset_key(key.id)
            emu.admin.set_limits([LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=60)])
            asyncio.run(agent_run(prompt="rotate", agent="anthropic", steps=2))
            log = emu.admin.log()
            limited = next(i for i, e in enumerate(log) if e.status == 429)
            gaps.append(log[limited + 1].at - log[limited].answered_at)  # type: ignore[operator]
        lines.append(f"| rotation: 429 answered -> request on the next key | {_ms(gaps)} |")

        # resume lateness under a real serve() process
        serve_env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_HOME": str(PREFECT_HOME.value()),
            "PYTHONPATH": str(ROOT),
        }
        log_path = work / "serve.log"
        with open(log_path, "w") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "deployments.serve", "--limit", "2"],
                env=serve_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            while "agent-run/default" not in log_path.read_text():
                time.sleep(0.2)
            store.update_config(inline_wait_max_s=1)
            lateness = []
            from prefect.deployments import run_deployment

            for _ in range(args.deferrals):
                emu.admin.reset(restore_config=True)
                for key in store.list_keys("anthropic"):
                    store.reset_key(key.id)
                emu.admin.set_limits(
                    [LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=12)]
                )
                before = len(store.audit_events(type="pool_resumed", limit=1000))
                run_deployment(
                    "agent-run/default",
                    timeout=120,
                    parameters={"prompt": "defer", "agent": "anthropic", "steps": 3},
                )
                resumed = store.audit_events(type="pool_resumed", limit=1000)
                assert len(resumed) > before, "the run did not defer and resume"
                lateness.append(resumed[0].details["lateness_s"])
            lines.append(
                "| resume lateness: start after the scheduled time "
                "(reset + 0.25 s; serve, prefetch 8 s) | "
                f"median {statistics.median(lateness):.2f} s, max {max(lateness):.2f} s |"
            )
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        store.close()

    table = "\n".join(
        [
            f"### Flow overhead, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({os.cpu_count()} cores)",
            "",
            "`.venv/bin/python bench/flow_overhead.py --write`",
            "",
            "| measure | value |",
            "|---|---|",
            *lines,
            "",
        ]
    )
    print(table)
    if args.write:
        docs = ROOT / "docs" / "benchmarks.md"
        existing = docs.read_text() if docs.exists() else "# Benchmarks\n\n"
        docs.write_text(existing + "\n" + table)


if __name__ == "__main__":
    main()
