"""The relay's reports to the keystore: each runs beside the answer it is about, never in its way.

    reports = ReportQueue(report, wait_s=5.0, describe=redactor.excerpt)
    reports.submit(ProviderResponse(...))   # as soon as an answer's head has arrived
    await reports.settle()                  # before the gate is asked, and when the turn ends
    reports.cancel()                        # at the very end: what is still running is dropped

`settle` waits at most `wait_s`; a report still running then is logged once and not waited for
again, so one hung report costs the turn `wait_s` once, not on every request. A report that
raises is logged (redacted) and forgotten: the relay goes on either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from flows.executors.base import ProviderResponse, Report

__all__ = ["ReportQueue"]

log = logging.getLogger(__name__)


class ReportQueue:
    def __init__(
        self, report: Report | None, *, wait_s: float, describe: Callable[[str], str]
    ) -> None:
        self._report = report
        self._wait_s = wait_s
        self._describe = describe
        self._running: set[asyncio.Task[None]] = set()  # waited for by `settle`
        self._late: set[asyncio.Task[None]] = set()  # outlived one `settle`: not waited for

    def submit(self, answer: ProviderResponse) -> None:
        if self._report is None:
            return
        task = asyncio.create_task(self._run(self._report, answer))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(self._late.discard)

    async def _run(self, report: Report, answer: ProviderResponse) -> None:
        try:
            await report(answer)
        except Exception as exc:
            log.warning(
                "relay: the report of a %s answer failed (%s: %s)",
                answer.status,
                type(exc).__name__,
                self._describe(str(exc)),
            )

    async def settle(self) -> None:
        running = set(self._running)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self._wait_s)
        if late:
            log.warning(
                "relay: %d report(s) still running after %g s; not waiting for them again",
                len(late),
                self._wait_s,
            )
            self._running -= late
            self._late |= late

    def cancel(self) -> None:
        for task in self._running | self._late:
            task.cancel()
