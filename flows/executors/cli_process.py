"""Run one CLI invocation as a child process: prompt on stdin, JSON lines from stdout.

The child leads its own process group (`start_new_session`), so a timeout or a cancelled turn
kills it together with anything it started (tool subprocesses), and so does the end of a normal
turn: nothing of a turn outlives it, and no leftover keeps the pipes open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

__all__ = ["CliOutput", "run_cli"]

log = logging.getLogger(__name__)
_TAIL_LINES = 20
_MAX_LINE_BYTES = 64 << 20  # a longer "line" is not JSON the executor could use


@dataclass(frozen=True)
class CliOutput:
    returncode: int
    events: list[dict[str, Any]]  # the stdout lines that were JSON objects, in order
    other_stdout: str  # the last non-JSON stdout lines (the CLI prints some errors as text)
    stderr: str  # the last stderr lines


async def run_cli(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdin: bytes,
    timeout_s: float,
) -> CliOutput:
    """Run to completion; raise TimeoutError after `timeout_s` (the group is killed first)."""
    events: list[dict[str, Any]] = []
    other: deque[str] = deque(maxlen=_TAIL_LINES)
    errors: deque[str] = deque(maxlen=_TAIL_LINES)
    process = await anyio.open_process(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    try:
        with anyio.fail_after(timeout_s):
            async with anyio.create_task_group() as tasks:
                assert process.stdin and process.stdout and process.stderr  # all PIPE above
                tasks.start_soon(_feed, process.stdin, stdin)
                tasks.start_soon(_read_stdout, process.stdout, events, other)
                tasks.start_soon(_read_lines, process.stderr, errors)
                await process.wait()
                _kill_group(process.pid)  # leftovers would hold stdout open
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:  # timed out or cancelled
                _kill_group(process.pid)
            await process.aclose()
    returncode = process.returncode
    assert returncode is not None
    log.debug("CLI pid %s exited %s after %d JSON events", process.pid, returncode, len(events))
    return CliOutput(returncode, events, "\n".join(other), "\n".join(errors))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, signal.SIGKILL)


async def _feed(stream: ByteSendStream, data: bytes) -> None:
    try:
        await stream.send(data)
        await stream.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the child exited without reading its input: its output says why


async def _lines(stream: ByteReceiveStream) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line
        if len(buffer) > _MAX_LINE_BYTES:
            yield buffer[:1024]
            buffer = b""
    if buffer:
        yield buffer


async def _read_stdout(
    stream: ByteReceiveStream, events: list[dict[str, Any]], other: deque[str]
) -> None:
    async for line in _lines(stream):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            events.append(event)
        else:
            other.append(line.decode("utf-8", errors="replace").rstrip())


async def _read_lines(stream: ByteReceiveStream, tail: deque[str]) -> None:
    async for line in _lines(stream):
        if line.strip():
            tail.append(line.decode("utf-8", errors="replace").rstrip())
