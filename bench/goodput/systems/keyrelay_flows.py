"""keyrelay's whole `agent-run` flow (agent `anthropic`, `steps` = the job's turns: one call
per turn), every job a real flow run on a local Prefect server.

The runs are called in one process, concurrently (`asyncio.gather` of `agent_run(...)`), not
through `python -m deployments.serve --limit 16`: a served run starts in a process of its own,
which imports Prefect and keyrelay (2-3 s of CPU here); sixteen of them at once on 2 cores would
put ~25 s of start-up into a makespan of 15-30 s and measure process start-up rather than
key selection. Only the flow's public entry point is used, so the flow's own code (lease,
executor, rate-limit handling, checkpoints) runs exactly as deployed.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from bench.goodput.conversation import job_prompt
from bench.goodput.systems.base import RunSpec, System
from bench.goodput.trace import Trace

__all__ = ["KeyrelayFlows"]


class KeyrelayFlows(System):
    label = "keyrelay agent-run flows"

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        assert spec.keystore_url and spec.master_key and spec.prefect_api_url
        home = tempfile.mkdtemp(prefix="keyrelay-goodput-")
        os.environ.update(
            {
                "KEYRELAY_HOME": home,
                "KEYRELAY_DATABASE_URL": spec.keystore_url,
                "KEYRELAY_MASTER_KEY": spec.master_key,
                "ANTHROPIC_BASE_URL": spec.base_url,
                "PREFECT_API_URL": spec.prefect_api_url,
                "PREFECT_HOME": home,
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
        )
        from flows.agent_run import agent_run

        self._agent_run: Any = agent_run

    async def open(self) -> None:
        # The first run pays once for the Prefect client, the SDK import and the keystore.
        await self._agent_run(prompt=job_prompt(0), agent="anthropic", steps=1)

    async def run_job(self, job: int, trace: Trace) -> None:
        await self._agent_run(
            prompt=job_prompt(job),
            agent="anthropic",
            steps=self.workload.turns,
            run_label=f"goodput job {job:02d}",
        )

    def annotate(self, trace: Trace) -> None:
        trace.keystore_path = "flows (their own calls)"
