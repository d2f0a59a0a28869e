"""What the per-turn relay (flows/executors/relay.py) costs, measured side by side in one run:

- latency per request: the same Messages request (a CLI-sized body, --body-kb) straight to the
  emulator and through a relay in front of it, alternating, p50/p99 over --requests each, both
  non-streamed and streamed (SSE); and the relay's CPU per request;
- throughput of a large streamed answer from a bare upstream that streams as fast as it can,
  direct and through a relay: --stream-mb in 64 KiB chunks, and an eighth of it in 512-byte
  events (the size of a model's SSE deltas, where the per-chunk cost shows);
- start + stop of a relay, which every turn pays, with and without one request on it.

The emulator, the bulk upstream and the client each run in their own process and the relay in
this one, as in a worker (the CLI is another process): the relay's CPU is not shared with the
client's, and this process's CPU time during a phase is the relay's.

    .venv/bin/python bench/relay_overhead.py [--requests 300] [--stream-mb 64] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.executors.relay import Relay  # noqa: E402

KEY = "sk-ant-api03-bench-relay-0123456789abcdefghijklmnopqrstuvwxyz-TAIL"
PATH = "/v1/messages?beta=true"
SMALL_CHUNK, LARGE_CHUNK = 512, 64 * 1024


# -- the bulk upstream (its own process) ----------------------------------------------------------


async def serve_bulk() -> None:
    """Answers every request with `?bytes=N&chunk=M`: N bytes of SSE-like data, chunked."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                length = next(
                    (
                        int(h.split(":", 1)[1])
                        for h in head
                        if h.lower().startswith("content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                query = parse_qs(urlsplit(head[0].split(" ")[1]).query)
                total, chunk = int(query["bytes"][0]), int(query["chunk"][0])
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                piece = (b"data: " + b"x" * chunk)[: chunk - 2] + b"\n\n"
                framed = b"%x\r\n" % len(piece) + piece + b"\r\n"
                for _ in range(total // len(piece)):
                    writer.write(framed)
                    if writer.transport.get_write_buffer_size() > 1 << 20:
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# -- the client (its own process) -----------------------------------------------------------------


def _request_body(body_kb: int, *, stream: bool) -> bytes:
    filler = "x" * (body_kb * 1024)
    body = {
        "model": "claude-bench",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": f"hello {filler}"}],
    }
    return json.dumps(body).encode()


async def _timed(
    client: httpx.AsyncClient, url: str, key: str, content: bytes
) -> tuple[float, int]:
    start = time.perf_counter()
    size = 0
    async with client.stream("POST", url, headers={"x-api-key": key}, content=content) as response:
        async for chunk in response.aiter_raw():
            size += len(chunk)
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}")
    return time.perf_counter() - start, size


async def client_latency(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for name, stream in (("json", False), ("sse", True)):
            content = _request_body(args.body_kb, stream=stream)
            for _ in range(args.warmup):
                await _timed(client, args.direct + PATH, KEY, content)
                await _timed(client, args.relay + PATH, args.placeholder, content)
            direct, relayed = [], []
            for _ in range(args.requests):
                direct.append((await _timed(client, args.direct + PATH, KEY, content))[0])
                relayed.append(
                    (await _timed(client, args.relay + PATH, args.placeholder, content))[0]
                )
            results[name] = {"direct": direct, "relay": relayed}
    return results


async def client_stream(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    total = args.stream_mb * 1024 * 1024
    async with httpx.AsyncClient(timeout=120) as client:
        for chunk, size in ((LARGE_CHUNK, total), (SMALL_CHUNK, total // 8)):
            query = f"/v1/messages?bytes={size}&chunk={chunk}"
            runs: dict[str, list[float]] = {"direct": [], "relay": []}
            for _ in range(args.stream_runs):
                for side, base, key in (
                    ("direct", args.direct, KEY),
                    ("relay", args.relay, args.placeholder),
                ):
                    seconds, got = await _timed(client, base + query, key, b"{}")
                    runs[side].append(got / seconds / 1e6)
            results[str(chunk)] = {"bytes": size, **runs}
    return results


# -- orchestration ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def _process(*argv: str, ready: str | None = None) -> AsyncIterator[tuple[Any, str]]:
    """A child process; with `ready`, wait until that URL answers, else read one line (its port)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        if ready is not None:
            async with httpx.AsyncClient() as probe:
                for _ in range(300):
                    try:
                        await probe.get(ready)
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
        yield process, line
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def _run_client(phase: str, args: argparse.Namespace, **urls: str) -> tuple[Any, float]:
    """The client's results for one phase, and the CPU seconds this process spent meanwhile."""
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in urls.items()]
    options = [
        f"--requests={args.requests}",
        f"--warmup={args.warmup}",
        f"--body-kb={args.body_kb}",
        f"--stream-mb={args.stream_mb}",
        f"--stream-runs={args.stream_runs}",
    ]
    cpu = time.process_time()
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role", f"client-{phase}", *flags, *options,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await client.communicate()
    if client.returncode != 0:
        raise SystemExit(f"the {phase} client failed")
    return json.loads(out), time.process_time() - cpu


async def _start_stop(runs: int, upstream: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"empty": [], "one request": []}
    content = _request_body(48, stream=True)
    async with httpx.AsyncClient(timeout=30) as client:
        await _timed(client, upstream + PATH, KEY, content)  # warm: imports, TLS context, pool
        async with Relay(secret=KEY, upstream=upstream) as relay:
            await _timed(client, relay.base_url + PATH, relay.placeholder, content)
        for _ in range(runs):
            start = time.perf_counter()
            async with Relay(secret=KEY, upstream=upstream):
                pass
            times["empty"].append(time.perf_counter() - start)
            start = time.perf_counter()
            async with Relay(secret=KEY, upstream=upstream) as relay:
                await _timed(client, relay.base_url + PATH, relay.placeholder, content)
            with_request = time.perf_counter() - start
            start = time.perf_counter()
            await _timed(client, upstream + PATH, KEY, content)
            times["one request"].append(with_request - (time.perf_counter() - start))
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f} / {_p(values, 0.99) * 1000:.2f}"


async def main(args: argparse.Namespace) -> str:
    load = os.getloadavg()[0]
    port = _free_port()
    emulator = f"http://127.0.0.1:{port}"
    ready = f"{emulator}/_admin/state"
    async with (
        _process(sys.executable, "-m", "api.emulator", f"--port={port}", ready=ready),
        _process(sys.executable, __file__, "--role", "bulk-upstream") as (_, bulk_port),
    ):
        bulk = f"http://127.0.0.1:{bulk_port}"
        async with Relay(secret=KEY, upstream=emulator) as relay:
            latency, latency_cpu = await _run_client(
                "latency",
                args,
                direct=emulator,
                relay=relay.base_url,
                placeholder=relay.placeholder,
            )
            relayed = relay.stats.forwarded
        async with Relay(secret=KEY, upstream=bulk) as relay:
            streams, stream_cpu = await _run_client(
                "stream", args, direct=bulk, relay=relay.base_url, placeholder=relay.placeholder
            )
            relayed_mb = relay.stats.bytes_from_upstream / 1e6
        start_stop = await _start_stop(args.start_stop_runs, emulator)

    rows = ["| measure | direct | through the relay | relay adds |", "|---|---|---|---|"]
    for name, label in (("json", "JSON"), ("sse", "SSE (`stream: true`)")):
        direct, via = latency[name]["direct"], latency[name]["relay"]
        added = [
            statistics.median(via) - statistics.median(direct),
            _p(via, 0.99) - _p(direct, 0.99),
        ]
        rows.append(
            f"| request, {label}, {args.body_kb} KB body: p50 / p99 ms | {_ms(direct)} | "
            f"{_ms(via)} | {added[0] * 1000:.2f} / {added[1] * 1000:.2f} |"
        )
    rows.append(
        f"| relay CPU per request (both kinds, {relayed} requests) | - | "
        f"{latency_cpu / relayed * 1000:.2f} ms | |"
    )
    for chunk, label in ((LARGE_CHUNK, "64 KiB chunks"), (SMALL_CHUNK, "512 B events")):
        result = streams[str(chunk)]
        direct, via = statistics.median(result["direct"]), statistics.median(result["relay"])
        rows.append(
            f"| stream of {result['bytes'] / 2**20:.0f} MiB in {label}: MB/s (median of "
            f"{args.stream_runs}) | {direct:.0f} | {via:.0f} | {via / direct:.0%} of direct |"
        )
    rows.append(f"| relay CPU per MB streamed | - | {stream_cpu / relayed_mb * 1000:.1f} ms | |")
    rows.append(
        f"| relay start + stop, no request: p50 / p99 ms ({args.start_stop_runs} runs) | - | "
        f"{_ms(start_stop['empty'])} | |"
    )
    rows.append(
        "| relay start + one SSE request + stop, minus the same request direct: p50 / p99 ms | "
        f"- | {_ms(start_stop['one request'])} | |"
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"### Relay overhead, {stamp} ({os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {load:.1f} before the run)",
            "",
            "`.venv/bin/python bench/relay_overhead.py --write`"
            + (
                f" (`--requests {args.requests} --stream-mb {args.stream_mb}`)"
                if (args.requests, args.stream_mb) != (300, 64)
                else ""
            ),
            "",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--direct", help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--placeholder", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--body-kb", type=int, default=48, help="request body (the CLI's ~48 KB)")
    parser.add_argument("--stream-mb", type=int, default=64)
    parser.add_argument("--stream-runs", type=int, default=5)
    parser.add_argument("--start-stop-runs", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    if args.role == "bulk-upstream":
        asyncio.run(serve_bulk())
    elif args.role.startswith("client-"):
        phase = client_latency if args.role == "client-latency" else client_stream
        print(json.dumps(asyncio.run(phase(args))))
    else:
        table = asyncio.run(main(args))
        print(table)
        if args.write:
            docs = ROOT / "docs" / "benchmarks.md"
            docs.write_text(docs.read_text().rstrip("\n") + "\n\n" + table)
