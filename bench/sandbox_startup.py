"""What the bubblewrap sandbox costs per turn, measured in one run:

- `true` through run_cli, plain and wrapped by Sandbox (the pure start-up cost of bwrap);
- one real `claude -p` turn against the in-process emulator, plain and sandboxed;
- Sandbox.wrap (building the command line) and the one-time availability probe.

    .venv/bin/python bench/sandbox_startup.py [--runs 50] [--turns 10]

Plain and sandboxed runs alternate, so drift on a shared machine hits both alike."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.emulator import EmulatorConfig, serve_emulator  # noqa: E402
from flows.executors.claude_bin import ensure_claude_bin  # noqa: E402
from flows.executors.cli_process import run_cli  # noqa: E402
from flows.executors.sandbox import Sandbox  # noqa: E402
from flows.executors.subprocess_env import child_env  # noqa: E402

API_KEY = "sk-ant-api03-bench-sandbox-0123456789abcdefghij"


def _summary(values: list[float]) -> str:
    p90 = sorted(values)[min(len(values) - 1, int(len(values) * 0.9))]
    return f"median {statistics.median(values) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


async def _timed(run: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


async def _compare(
    name: str, runs: int, plain: Callable[[], Awaitable[None]], boxed: Callable[[], Awaitable[None]]
) -> None:
    await plain()  # warm caches (page cache for a 400 MB binary, the probe)
    await boxed()
    times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
    for _ in range(runs):
        times["plain"].append(await _timed(plain))
        times["sandboxed"].append(await _timed(boxed))
    base, boxed_median = (statistics.median(times[k]) for k in ("plain", "sandboxed"))
    print(f"{name} ({runs} runs each)")
    for kind, values in times.items():
        print(f"  {kind:<10} {_summary(values)}")
    print(
        f"  sandbox adds {(boxed_median - base) * 1000:.1f} ms per run "
        f"(ratio {boxed_median / base:.2f})"
    )


async def main(runs: int, turns: int) -> None:
    sandbox = Sandbox("required")
    start = time.perf_counter()
    sandbox.check()
    print(f"availability probe (once per process): {(time.perf_counter() - start) * 1000:.1f} ms")
    with tempfile.TemporaryDirectory(prefix="keyrelay-bench-sandbox-") as scratch:
        work = Path(scratch) / "work"
        turn = Path(scratch) / "turn"
        for folder in (work, turn / "home" / ".claude", turn / "tmp"):
            folder.mkdir(parents=True)
        env = {"PATH": "/usr/bin:/bin"}

        start = time.perf_counter()
        for _ in range(100):
            sandbox.wrap(["true"], env, cwd=work, writable=[turn])
        print(f"Sandbox.wrap: {(time.perf_counter() - start) * 10:.2f} ms per call")

        async def true_plain() -> None:
            await run_cli(["true"], env=env, cwd=work, stdin=b"", timeout_s=30)

        async def true_boxed() -> None:
            argv, wrapped = sandbox.wrap(["true"], env, cwd=work, writable=[turn])
            await run_cli(argv, env=wrapped, cwd=work, stdin=b"", timeout_s=30)

        await _compare("`true`", runs, true_plain, true_boxed)

        binary = ensure_claude_bin()
        with serve_emulator(EmulatorConfig()) as emulator:
            cli_env = child_env(
                secret=API_KEY,
                home=turn / "home",
                config_dir=turn / "home" / ".claude",
                tmp_dir=turn / "tmp",
                base_url=emulator.base_url,
            )
            argv = [str(binary), "-p", "--output-format", "stream-json", "--verbose"]

            async def turn_with(command: list[str], turn_env: dict[str, str]) -> None:
                output = await run_cli(
                    command, env=turn_env, cwd=work, stdin=b"hello", timeout_s=120
                )
                if output.returncode != 0:
                    raise SystemExit(f"the CLI failed: {output.stderr or output.other_stdout}")

            async def cli_plain() -> None:
                await turn_with(argv, cli_env)

            async def cli_boxed() -> None:
                await turn_with(*sandbox.wrap(argv, cli_env, cwd=work, writable=[turn]))

            await _compare("claude -p turn against the emulator", turns, cli_plain, cli_boxed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    anyio.run(main, args.runs, args.turns)
