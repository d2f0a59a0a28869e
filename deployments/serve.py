"""Serve the `agent-run` deployment in the foreground: each flow run in its own child process,
until SIGTERM or Ctrl-C.

    python -m deployments.serve [--name default] [--limit 4]
    prefect deployment run 'agent-run/default' --param prompt="..." --param agent=anthropic

Polls every second and starts runs `prefetch` seconds before their scheduled time, so a run
deferred to a rate-limit reset is running again within about a second of it (a new process takes
2-4 s to start here; without prefetch the run would start that late).

Every flow run it starts sends Prefect's flow-run heartbeat every HEARTBEAT_FREQUENCY_S (30 s, the
least Prefect 3.9 allows), which keyrelay's crash automation (`keyrelay automations apply`) relies
on: a run whose heartbeat stops is marked Crashed and resumed from its checkpoint."""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from flows.agent_run import agent_run
from flows.recovery import HEARTBEAT_FREQUENCY_S

__all__ = ["DEPLOYMENT_NAME", "build_deployment", "main"]

DEPLOYMENT_NAME = "default"
QUERY_SECONDS = 1
PREFETCH_SECONDS = 8


def build_deployment(name: str = DEPLOYMENT_NAME) -> RunnerDeployment:
    deployment = agent_run.to_deployment(
        name=name,
        # The same module-path entrypoint as prefect.yaml, so serving never rewrites the
        # deployment into a file path that workers outside a checkout could not load.
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["keyrelay"],
        description="LLM agent runs that rotate keys on rate limits and wait for resets.",
    )
    assert isinstance(deployment, RunnerDeployment)  # called outside an event loop: not a coroutine
    return deployment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__)
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name")
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once")
    args = parser.parse_args(argv)
    serve(
        build_deployment(args.name),
        limit=args.limit,
        query_seconds=QUERY_SECONDS,
        prefetch_seconds=PREFETCH_SECONDS,
        pause_on_shutdown=False,
        heartbeat_seconds=HEARTBEAT_FREQUENCY_S,  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of each run
    )


if __name__ == "__main__":
    main()
