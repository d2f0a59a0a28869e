"""The HTTP API under load: a real `keyrelay api` process and many concurrent clients.

    .venv/bin/python bench/api_load.py [--clients 50] [--seconds 20] [--one-address] [--write]

Starts `keyrelay api` (uvicorn, one process) on a free port with a SQLite keystore in a temporary
home holding a few keys, then runs two phases of `--clients` httpx async clients, each with a
valid token, looping over the routes for `--seconds`:

    measure   KEYRELAY_API_RATE_LIMIT high enough that the server, not the limit, sets the pace
    limited   the default limit (10/minute per client): past it, only 429s may appear

Each client connects from its own loopback address (127.0.0.x; Linux routes all of 127/8), so it
is a client of its own for the per-client limit; `--one-address` puts them all on 127.0.0.1 (one
shared budget). Reported per phase: requests, requests per second, status counts, 5xx, transport
errors, p50/p99 latency as the clients saw it (the clients share the host with the server, so
this includes waiting for a core), and the CPU seconds the server and the clients used (to tell
which of them set the pace). `--write` appends the table to docs/benchmarks.md; the exit status
is 1 when any request got a 5xx or no answer."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keystore import Settings, open_keystore  # noqa: E402

DEFAULT_RATE = "10/minute"  # keystore.Settings.api_rate_limit's default
UNLIMITED_RATE = "1000000/minute"
PHASES = (("measure", UNLIMITED_RATE), ("limited", DEFAULT_RATE))
KEYS = (("anthropic", 3), ("openai", 2))
START_TIMEOUT_S = 60


@dataclass
class PhaseResult:
    name: str
    rate_limit: str
    clients: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    server_cpu_s: float | None = None  # the `keyrelay api` process, during the phase (Linux)
    client_cpu_s: float = 0.0  # this process (every client), during the phase

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def quantile_ms(self, q: int) -> float:
        if len(self.latencies_s) < 2:
            return self.latencies_s[0] * 1000 if self.latencies_s else float("nan")
        return statistics.quantiles(self.latencies_s, n=100)[q - 1] * 1000

    def row(self) -> str:
        other = {s: n for s, n in sorted(self.statuses.items()) if s not in (200, 429)}
        return (
            f"| {self.name} | {self.rate_limit} | {self.clients} | {self.requests} "
            f"| {self.requests / self.seconds:.0f} | {self.statuses[200]} | {self.statuses[429]} "
            f"| {other or '-'} | {self.server_errors} | {sum(self.transport_errors.values())} "
            f"| {self.quantile_ms(50):.1f} | {self.quantile_ms(99):.1f} "
            f"| {'-' if self.server_cpu_s is None else f'{self.server_cpu_s:.1f}'} "
            f"| {self.client_cpu_s:.1f} |"
        )


TABLE_HEAD = (
    "| phase | rate limit | clients | requests | requests / s | 200 | 429 | other | 5xx "
    "| transport errors | p50 ms | p99 ms | server CPU s | clients CPU s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def seed_keystore(home: Path) -> list[int]:
    """A keystore (and master key file) under `home` with a few keys; their ids."""
    store = open_keystore(settings=Settings(home=home, database_url=None, master_key=None))
    try:
        ids = [
            store.add_key(
                name=f"{provider}-{i}",
                provider=provider,
                secret=f"sk-bench-{provider}-{i}-{secrets.token_hex(24)}",
            ).id
            for provider, count in KEYS
            for i in range(count)
        ]
    finally:
        store.close()
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keyrelay_command() -> list[str]:
    script = Path(sys.executable).with_name("keyrelay")
    if script.exists():
        return [str(script)]
    found = shutil.which("keyrelay")
    return [found] if found else [sys.executable, "-m", "api.cli"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_api(home: Path, token: str, rate_limit: str) -> Iterator[tuple[str, int]]:
    """`keyrelay api` on a free port with this home, token and limit; yields its base URL and
    pid once /healthz answers (never limited, so polling it spends no budget)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_")}
    env |= {
        "KEYRELAY_HOME": str(home),
        "KEYRELAY_API_TOKEN": token,
        "KEYRELAY_API_RATE_LIMIT": rate_limit,
    }
    log = home / f"api-{port}.log"
    command = [*keyrelay_command(), "api", "--host", "127.0.0.1", "--port", str(port)]
    with (
        log.open("w") as output,
        subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT) as server,
    ):
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"keyrelay api did not start:\n{log.read_text()}")
                time.sleep(0.1)
            yield base_url, server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def routes(key_ids: list[int]) -> list[tuple[str, str]]:
    """What each client cycles through: every read route and one write (reset, audited)."""
    first = key_ids[0]
    return [
        ("GET", "/keys"),
        ("GET", "/keys/status"),
        ("GET", f"/keys/{first}"),
        ("GET", "/keys/explain?provider=anthropic"),
        ("GET", "/keys/config"),
        ("GET", "/audit?limit=20"),
        ("POST", f"/keys/{key_ids[-1]}/reset"),
    ]


async def one_client(
    client: httpx.AsyncClient,
    first: int,
    plan: list[tuple[str, str]],
    deadline: float,
    result: PhaseResult,
) -> None:
    i = first  # clients start at different routes
    while True:  # at least one request, however short the phase
        method, path = plan[i % len(plan)]
        i += 1
        started = time.perf_counter()
        try:
            response = await client.request(method, path)
        except httpx.TransportError as exc:
            result.transport_errors[type(exc).__name__] += 1
        else:
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[response.status_code] += 1
        if time.perf_counter() >= deadline:
            return


async def load(
    base_url: str,
    token: str,
    plan: list[tuple[str, str]],
    result: PhaseResult,
    *,
    distinct_addresses: bool,
) -> None:
    # Every client is built before the clock starts (building one costs more than a request),
    # and they share one TLS context, which plain HTTP never uses.
    tls = ssl.create_default_context()
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {token}"},
                    transport=httpx.AsyncHTTPTransport(
                        verify=tls,
                        local_address=f"127.0.0.{10 + n}" if distinct_addresses else None,
                    ),
                    timeout=30,
                )
            )
            for n in range(result.clients)
        ]
        deadline = time.perf_counter() + result.seconds
        await asyncio.gather(
            *(one_client(client, n, plan, deadline, result) for n, client in enumerate(clients))
        )


def run(
    *,
    clients: int = 50,
    seconds: float = 20.0,
    phases: tuple[tuple[str, str], ...] = PHASES,
    distinct_addresses: bool = True,
) -> list[PhaseResult]:
    """Every phase against a fresh `keyrelay api` process on one seeded keystore."""
    if distinct_addresses and clients > 240:
        raise ValueError("at most 240 distinct loopback addresses (127.0.0.10-249)")
    token = secrets.token_hex(24)
    results = []
    with tempfile.TemporaryDirectory(prefix="keyrelay-api-load-") as tmp:
        home = Path(tmp)
        plan = routes(seed_keystore(home))
        for name, rate_limit in phases:
            result = PhaseResult(name, rate_limit, clients, seconds)
            with running_api(home, token, rate_limit) as (base_url, pid):
                server_before, client_before = cpu_seconds(pid), time.process_time()
                asyncio.run(
                    load(base_url, token, plan, result, distinct_addresses=distinct_addresses)
                )
                server_after = cpu_seconds(pid)
                result.client_cpu_s = time.process_time() - client_before
                if server_before is not None and server_after is not None:
                    result.server_cpu_s = server_after - server_before
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--one-address", action="store_true", help="every client on 127.0.0.1 (one budget)"
    )
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    distinct = not args.one_address and sys.platform.startswith("linux")
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = run(clients=args.clients, seconds=args.seconds, distinct_addresses=distinct)
    flags = f" --clients {args.clients}" if args.clients != 50 else ""
    flags += f" --seconds {args.seconds:g}" if args.seconds != 20.0 else ""
    flags += " --one-address" if not distinct else ""
    table = "\n".join(
        [
            f"### API under load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
            f"({os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{args.clients} clients x {args.seconds:g} s per phase, "
            f"{'one address each' if distinct else 'one address for all'}, "
            f"load average {busy:.1f} before the run)",
            "",
            f"`.venv/bin/python bench/api_load.py{flags} --write`",
            "",
            TABLE_HEAD,
            *(r.row() for r in results),
            "",
        ]
    )
    if args.write:
        docs = ROOT / "docs" / "benchmarks.md"
        existing = docs.read_text() if docs.exists() else "# Benchmarks\n\n"
        docs.write_text(existing + "\n" + table)
    print(table)
    for r in results:
        if r.transport_errors:
            print(f"{r.name}: transport errors {dict(r.transport_errors)}")
    if any(r.server_errors or r.transport_errors for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
