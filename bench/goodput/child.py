"""The client process of one run: build the system, warm it up, say "ready", wait for the common
start time, run every job at once, and send back its `Trace` (or the error that stopped it).

Its CPU is measured here, between the start and the last job's end, so neither the emulator
(in the parent) nor the imports and warm-up count."""

from __future__ import annotations

import asyncio
import time
import traceback
from multiprocessing.connection import Connection

from bench.goodput.systems import RunSpec, System, make_system
from bench.goodput.trace import Trace

__all__ = ["READY", "child_main"]

READY = "ready"


def child_main(spec: RunSpec, conn: Connection, timeout_s: float) -> None:
    try:
        system = make_system(spec)
        trace = asyncio.run(_run(system, spec, conn, timeout_s))
    except BaseException:
        conn.send(traceback.format_exc())
        raise
    conn.send(trace)


async def _run(system: System, spec: RunSpec, conn: Connection, timeout_s: float) -> Trace:
    await system.open()
    conn.send(READY)
    start_at: float = conn.recv()  # nothing else runs on this loop while it waits
    await asyncio.sleep(max(0.0, start_at - time.time()))
    trace = Trace(system=spec.system, started_at=start_at)
    cpu_at_start = time.process_time()

    async def job(number: int) -> None:
        try:
            await system.run_job(number, trace)
        except Exception as failed:
            trace.jobs_failed += 1
            trace.error(failed)

    tasks = [asyncio.create_task(job(n)) for n in range(spec.workload.jobs)]
    _done, late = await asyncio.wait(tasks, timeout=timeout_s)
    trace.finished_at = time.time()
    trace.cpu_s = time.process_time() - cpu_at_start
    for task in late:
        task.cancel()
    if late:
        trace.jobs_failed += len(late)
        trace.errors.append(f"{len(late)} jobs still running after {timeout_s:.0f} s")
        await asyncio.wait(late)
    system.annotate(trace)
    await system.close()
    return trace
