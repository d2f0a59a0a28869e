"""An interrupted agent turn, resumed mid-turn against redone from the start, side by side.

One turn of the `claude-code` executor (the real `claude` CLI, sandboxed, through its per-turn
relay) in which the emulator plays an agent of --steps Bash tool calls, each appending `step<i>`
to `steps.txt` in the working directory. Key A may serve --limit requests (a window far longer
than the run), so the turn is cut off part-way; key B, unlimited, finishes it:

- resumed: what keyrelay does now. The attempt on key A hands its session to `keep_partial`; key
  B `--resume`s that session with `continuation_prompt(task, why)`;
- redone: what keyrelay did before. Key B starts the turn over from the checkpoint the turn began
  with (none: it is the run's first turn), in the same working directory, so the tool calls made
  on key A run again.

Both attempts run as `flows.steps` runs them: leased from a keystore (a temporary SQLite one),
every response reported to it (`ResponseRecorder`) and the relay's gate asking it before each
request (`Keystore.standing_refusal`), so once key A's requests bucket says 0 the next request is
refused locally, without a provider call (`--no-gate`: the provider refuses it, with a 429).

Per run: the provider calls and their statuses (the emulator's request log), input tokens served
(the emulator's per-key counters), where the interruption landed (tool steps done on key A), the
steps that ran more than once (repeated lines of `steps.txt`), and the wall time of each attempt
and of the whole turn. The variants alternate (the order flips every repeat), so drift on a
shared machine hits both alike; the table shows medians and ranges over --repeats.

    .venv/bin/python bench/resume_midturn.py [--steps 20] [--limit 10] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.emulator import AgentScript, EmulatorAdmin, LimitRule, fingerprint  # noqa: E402
from flows.blocking import in_thread  # noqa: E402
from flows.continuation import continuation_prompt, interruption  # noqa: E402
from flows.executors.base import TurnResult  # noqa: E402
from flows.executors.claude_bin import CLAUDE_CODE_VERSION, ensure_claude_bin  # noqa: E402
from flows.executors.claude_code import ClaudeCodeExecutor  # noqa: E402
from flows.executors.errors import ExecutorError  # noqa: E402
from flows.job import AgentJob  # noqa: E402
from flows.responses import ResponseRecorder  # noqa: E402
from keystore import Keystore, Lease, MasterKey, RateLimitSignal, open_keystore  # noqa: E402
from keystore.candidates import LOCAL_REFUSAL  # noqa: E402

PROVIDER = "claude-code"
TASK = "Do the steps."
FILE = "steps.txt"
VARIANTS = ("resumed", "redone")


def _api_key(tag: str) -> str:
    return f"sk-ant-api03-bench-{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}-TAIL"


@contextmanager
def _leased(store: Keystore, secret: str) -> Iterator[Lease]:
    """Add a key, lease exactly it, release and delete it afterwards (one key in the pool)."""
    key = store.add_key(name=f"bench-{uuid.uuid4().hex[:8]}", provider=PROVIDER, secret=secret)
    lease = store.acquire(provider=PROVIDER, holder="bench-resume-midturn")
    try:
        if lease.key_id != key.id:
            raise RuntimeError("another key of the provider is still in the keystore")
        yield lease
    finally:
        store.release(lease)
        store.delete_key(key.id, force=True)


@dataclass
class Attempt:
    outcome: object
    seconds: float
    kept: list[dict[str, Any]] = field(default_factory=list)


async def _attempt(
    executor: ClaudeCodeExecutor,
    store: Keystore,
    secret: str,
    *,
    prompt: str,
    checkpoint: dict[str, Any] | None,
    gate: bool,
) -> Attempt:
    kept: list[dict[str, Any]] = []

    async def keep(state: dict[str, Any]) -> None:
        kept.append(state)

    start = time.perf_counter()
    with _leased(store, secret) as lease:
        recorder = ResponseRecorder(
            store, key_id=lease.key_id, provider=PROVIDER, run_id="bench-resume-midturn"
        )

        async def ask() -> RateLimitSignal | None:
            return await in_thread(store.standing_refusal, lease)

        try:
            outcome: object = await executor.run_turn(
                lease,
                prompt=prompt,
                model=None,
                checkpoint=checkpoint,
                report=recorder,
                keep_partial=keep,
                gate=ask if gate else None,
            )
        except ExecutorError as failed:
            outcome = failed
        if isinstance(outcome, RateLimitSignal) and recorder.refusal is not None:
            outcome = recorder.refusal  # as flows.steps does: the provider's own words
    return Attempt(outcome=outcome, seconds=time.perf_counter() - start, kept=kept)


async def one_run(
    variant: str,
    args: argparse.Namespace,
    admin: EmulatorAdmin,
    base_url: str,
    claude_bin: Path,
    store: Keystore,
) -> dict[str, Any]:
    a, b = _api_key("a"), _api_key("b")
    admin.reset(restore_config=True)
    admin.set_agent(AgentScript.appending_steps(args.steps, file_name=FILE))
    admin.set_limits([LimitRule(key=a, requests=args.limit, window_s=3600)])
    if args.reply_delay:
        admin.set_reply_delay(args.reply_delay)
    workdir = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    try:
        executor = ClaudeCodeExecutor(
            claude_bin=claude_bin,
            base_url=base_url,
            workdir=workdir,
            job=AgentJob(allowed_tools=["Bash"]),
            sandbox=args.sandbox,
        )
        log_file = workdir / FILE
        start = time.perf_counter()
        first = await _attempt(executor, store, a, prompt=TASK, checkpoint=None, gate=args.gate)
        lines_at_cut = log_file.read_text().splitlines() if log_file.exists() else []
        if isinstance(first.outcome, TurnResult):
            raise RuntimeError("the turn was not interrupted: lower --limit")
        partial = first.kept[-1] if first.kept else None
        if variant == "resumed":
            if partial is None:
                raise RuntimeError(f"the interrupted attempt kept nothing: {first.outcome!r}")
            cut_off = len(partial.get("interrupted_tools") or [])
            prompt = continuation_prompt(TASK, interruption(first.outcome), cut_off)
            second = await _attempt(
                executor, store, b, prompt=prompt, checkpoint=partial, gate=args.gate
            )
        else:
            second = await _attempt(
                executor, store, b, prompt=TASK, checkpoint=None, gate=args.gate
            )
        total = time.perf_counter() - start
        if not isinstance(second.outcome, TurnResult):
            raise RuntimeError(f"the second attempt did not finish the turn: {second.outcome!r}")
        lines = log_file.read_text().splitlines()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    counts = Counter(lines)
    expected = {f"step{i}" for i in range(1, args.steps + 1)}
    if set(counts) != expected:
        raise RuntimeError(f"{FILE} lacks steps or holds others: {sorted(set(counts) ^ expected)}")
    calls = [e for e in admin.log() if e.path.startswith("/v1/messages")]
    counters = admin.keys()  # per key, served requests only
    by_key = {c.key_fingerprint: c for c in counters}
    fa, fb = fingerprint(a), fingerprint(b)
    source = getattr(first.outcome, "source", "")
    return {
        "variant": variant,
        "cut_after_steps": len(lines_at_cut),
        "cut_by": "keyrelay (gate)"
        if str(source).startswith(LOCAL_REFUSAL)
        else type(first.outcome).__name__,
        "interrupted_tools": len((partial or {}).get("interrupted_tools") or []),
        "calls": len(calls),
        "calls_a": sum(e.key_fingerprint == fa for e in calls),
        "calls_b": sum(e.key_fingerprint == fb for e in calls),
        "served": sum(e.status == 200 for e in calls),
        "refused_429": sum(e.status == 429 for e in calls),
        "other_status": sum(e.status not in (200, 429) for e in calls),
        "refused_locally": int(str(source).startswith(LOCAL_REFUSAL)),
        "steps_run_twice": sum(n > 1 for n in counts.values()),
        "extra_step_runs": sum(n - 1 for n in counts.values()),
        "input_tokens_a": by_key[fa].input_tokens if fa in by_key else 0,
        "input_tokens_b": by_key[fb].input_tokens if fb in by_key else 0,
        "output_tokens": sum(c.output_tokens for k, c in by_key.items() if k in (fa, fb)),
        "first_request_b_tool_results": next(
            (e.tool_results for e in calls if e.key_fingerprint == fb), None
        ),
        "seconds_a": first.seconds,
        "seconds_b": second.seconds,
        "seconds": total,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _emulator() -> Iterator[tuple[str, EmulatorAdmin]]:
    """The emulator in its own process, so its CPU is not this process's (the relay's)."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.emulator", f"--port={port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    admin = EmulatorAdmin(base_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.state()
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)
        yield base_url, admin
    finally:
        admin.close()
        proc.terminate()
        proc.wait(timeout=10)


# (column, the run's value); cells are median (min-max) over the repeats.
COLUMNS: list[tuple[str, Any]] = [
    ("interruption after tool steps", lambda r: r["cut_after_steps"]),
    ("provider calls", lambda r: r["calls"]),
    ("on key A", lambda r: r["calls_a"]),
    ("on key B", lambda r: r["calls_b"]),
    ("served (200)", lambda r: r["served"]),
    ("429 from the provider", lambda r: r["refused_429"]),
    ("refused locally", lambda r: r["refused_locally"]),
    ("tool steps run twice", lambda r: r["steps_run_twice"]),
    ("input tokens served, A + B", lambda r: r["input_tokens_a"] + r["input_tokens_b"]),
    ("attempt on A s", lambda r: f"{r['seconds_a']:.1f}"),
    ("attempt on B s", lambda r: f"{r['seconds_b']:.1f}"),
    ("whole turn s", lambda r: f"{r['seconds']:.1f}"),
]


def _cell(values: list[Any]) -> str:
    """Median (min-max); strings are preformatted floats, kept to their precision."""
    decimals = len(values[0].split(".")[1]) if isinstance(values[0], str) else 0
    numbers = [float(v) for v in values]
    mid, low, high = statistics.median(numbers), min(numbers), max(numbers)
    if low == high:
        return f"{mid:.{decimals}f}"
    return f"{mid:.{decimals}f} ({low:.{decimals}f}-{high:.{decimals}f})"


def table(
    runs: list[dict[str, Any]], args: argparse.Namespace, *, load: float, sandbox: str
) -> str:
    rows = [
        "| variant | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        cells = [_cell([value(r) for r in mine]) for _, value in COLUMNS]
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    flags = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name, default in (("steps", 20), ("limit", 10), ("repeats", 3), ("reply_delay", 0.0))
        if getattr(args, name) != default
    ] + ([] if args.gate else ["--no-gate"])
    command = (
        "`.venv/bin/python bench/resume_midturn.py --write" + "".join(f" {f}" for f in flags) + "`"
    )
    return "\n".join(
        [
            f"### An interrupted {args.steps}-tool-call turn, resumed against redone, {stamp} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}, claude "
            f"{CLAUDE_CODE_VERSION}, sandbox {sandbox}, {args.repeats} alternating repeats, "
            f"load average {load:.1f} before)",
            "",
            command,
            "",
            f"Key A serves {args.limit} requests, then "
            + ("keyrelay refuses the next one itself" if args.gate else "the provider refuses")
            + "; key B finishes the turn. "
            "Cells: median (min-max) over the repeats; calls and tokens as the emulator counted "
            "them; wall time from the first attempt's lease to the second's release.",
            "",
            *rows,
            "",
        ]
    )


async def main(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    load = os.getloadavg()[0]
    claude_bin = ensure_claude_bin()
    home = Path(tempfile.mkdtemp(prefix="bench-resume-keystore-"))
    store = open_keystore(
        f"sqlite:///{home / 'k.db'}", master_key=MasterKey([Fernet.generate_key()])
    )
    runs: list[dict[str, Any]] = []
    try:
        with _emulator() as (base_url, admin):
            probe = ClaudeCodeExecutor(claude_bin=claude_bin, sandbox=args.sandbox)
            sandbox = (
                "off"
                if args.sandbox == "off"
                else ("bubblewrap" if probe.sandbox.check() is None else "none (bwrap unavailable)")
            )
            # Warm-up (not counted): the page cache for the CLI's binary, the sandbox probe.
            await one_run("resumed", args, admin, base_url, claude_bin, store)
            for repeat in range(args.repeats):
                order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    run = await one_run(variant, args, admin, base_url, claude_bin, store)
                    run["repeat"] = repeat
                    runs.append(run)
                    print(
                        f"repeat {repeat} {variant:<8} cut after {run['cut_after_steps']} steps "
                        f"({run['cut_by']}), {run['calls']} calls ({run['calls_a']} on A, "
                        f"{run['calls_b']} on B; {run['served']} served, {run['refused_429']} "
                        f"429), {run['steps_run_twice']} steps twice, input tokens "
                        f"{run['input_tokens_a']} + {run['input_tokens_b']}, "
                        f"{run['seconds_a']:.1f} + {run['seconds_b']:.1f} = "
                        f"{run['seconds']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    return table(runs, args, load=load, sandbox=sandbox), runs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="tool calls in the turn")
    parser.add_argument("--limit", type=int, default=10, help="requests key A serves")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--reply-delay", type=float, default=0.0, help="seconds the emulator waits per answer"
    )
    parser.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="no local refusal: the provider answers key A's last request with a 429",
    )
    parser.add_argument("--sandbox", default="auto", choices=["auto", "required", "off"])
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    text, runs = asyncio.run(main(args))
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=1))
    if args.write:
        docs = ROOT / "docs" / "benchmarks.md"
        docs.write_text(docs.read_text().rstrip("\n") + "\n\n" + text)
