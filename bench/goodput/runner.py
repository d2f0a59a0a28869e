"""Run one system on one workload, and put together what it and the emulator say.

The emulator runs in this process (a background thread, real sockets, real clock); the system
runs in a child process of its own (`child.py`), so its CPU is its own. Order of a run: clear
the emulator with no limits in force; start the child, which warms up; once it is ready, clear
the emulator again (nothing of the warm-up counts), put the workload's limits in force and give
the child a start time a moment ahead; then read the emulator's counters and log.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from api.emulator import RunningEmulator
from bench.goodput.child import READY, child_main
from bench.goodput.keystores import create_keystore
from bench.goodput.prefect_server import PrefectServer
from bench.goodput.systems import RunSpec, keystore_backend
from bench.goodput.trace import Trace
from bench.goodput.workloads import Workload

__all__ = ["RunResult", "Runner"]

_READY_TIMEOUT_S = 180.0
_START_DELAY_S = 0.3


@dataclass
class RunResult:
    system: str
    workload: str
    repeat: int
    lower_bound_s: float
    makespan_s: float
    calls_served: int
    refusals: int  # 429s the emulator answered
    over_limit: int  # requests served over a window's limit: must stay 0
    jobs_failed: int
    input_tokens_served: int
    cpu_s: float
    added_s: list[float]
    bookkeeping_s: list[float]
    keystore_path: str | None
    orchestrator_cpu_s: float | None
    served_at_s: list[float] = field(default_factory=list)  # answer times of the 200s, from start
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self.cpu_s / max(1, self.calls_served)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def percentile_ms(values: list[float], q: float) -> float | None:
    found = _quantile(values, q)
    return None if found is None else found * 1000


class Runner:
    def __init__(
        self,
        emulator: RunningEmulator,
        *,
        workdir: Path,
        prefect: PrefectServer | None,
        preload: list[str] = [],  # noqa: B006 (read only)
    ) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.prefect = prefect
        self._mp = mp.get_context("forkserver")
        # Clients fork from one server process that imported these once (LiteLLM and Prefect
        # take 5-10 s each). It starts with the first client and keeps this process's
        # environment from then on: set PREFECT_API_URL and the like before the first run.
        self._mp.set_forkserver_preload(preload)

    def _clear(self, workload: Workload, *, limits: bool) -> None:
        state = self.emulator.state
        state.reset()
        state.set_reply_delay(workload.reply_delay_s)
        state.set_limits(limits=workload.emulator_limits() if limits else [], ip_limit=None)

    def run(self, system: str, workload: Workload, repeat: int) -> RunResult:
        backend = keystore_backend(system)
        keystore = (
            create_keystore(workload, backend=backend, workdir=self.workdir) if backend else None
        )
        spec = RunSpec(
            system=system,
            workload=workload,
            base_url=self.emulator.base_url,
            keystore_url=keystore.url if keystore else None,
            master_key=keystore.master_key if keystore else None,
            prefect_api_url=self.prefect.api_url if self.prefect else None,
        )
        try:
            trace = self._run_child(spec, workload)
        finally:
            if keystore is not None:
                keystore.drop()
        return self._result(trace, workload, repeat)

    def _run_child(self, spec: RunSpec, workload: Workload) -> Trace:
        self._clear(workload, limits=False)
        timeout_s = 6 * workload.lower_bound_s() + 60
        ours, theirs = self._mp.Pipe()
        child = self._mp.Process(target=child_main, args=(spec, theirs, timeout_s), daemon=True)
        child.start()
        try:
            if _receive(ours, child, timeout_s=_READY_TIMEOUT_S) != READY:
                raise RuntimeError("the run's client did not say it was ready")
            self._clear(workload, limits=True)
            orchestrator_cpu = self.prefect.cpu_s() if self.prefect else None
            ours.send(time.time() + _START_DELAY_S)
            trace = _receive(ours, child, timeout_s=timeout_s + 120)
            assert isinstance(trace, Trace)
            if orchestrator_cpu is not None and self.prefect is not None:
                trace.orchestrator_cpu_s = self.prefect.cpu_s() - orchestrator_cpu
            return trace
        finally:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()

    def _result(self, trace: Trace, workload: Workload, repeat: int) -> RunResult:
        state = self.emulator.state
        counters = state.key_counters()
        log = state.log_entries()
        served_at = sorted(
            (e.answered_at or e.at) - trace.started_at for e in log if e.status == 200
        )
        return RunResult(
            system=trace.system,
            workload=workload.name,
            repeat=repeat,
            lower_bound_s=workload.lower_bound_s(),
            makespan_s=trace.finished_at - trace.started_at,
            calls_served=sum(c.served for c in counters),
            refusals=sum(c.rate_limited for c in counters),
            over_limit=sum(b.served_over_limit for b in state.bucket_reports()),
            jobs_failed=trace.jobs_failed,
            input_tokens_served=sum(c.input_tokens for c in counters),
            cpu_s=trace.cpu_s,
            added_s=trace.added_s,
            bookkeeping_s=trace.bookkeeping_s,
            keystore_path=trace.keystore_path,
            orchestrator_cpu_s=trace.orchestrator_cpu_s,
            served_at_s=served_at,
            errors=trace.errors,
        )


def _receive(conn: Connection, child: BaseProcess, *, timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while not conn.poll(1.0):
        if not child.is_alive():
            raise RuntimeError(f"the run's client exited ({child.exitcode}) without a word")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run's client said nothing for {timeout_s:.0f} s")
    message = conn.recv()
    if isinstance(message, str) and message != READY:  # the child's traceback
        raise RuntimeError(f"the run's client failed:\n{message}")
    return message
