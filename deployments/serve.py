"""Serve the `agent-run` deployment in the foreground: each flow run in its own child process,
until SIGTERM or Ctrl-C.

    python -m deployments.serve [--name default] [--limit 4] [--local-server]
    prefect deployment run 'agent-run/default' --param prompt="..." --param agent=anthropic

Polls every second and starts runs `prefetch` seconds before their scheduled time, so a run
deferred to a rate-limit reset is running again within about a second of it (a new process takes
2-4 s to start here; without prefetch the run would start that late).

Refuses to start, with one `error: ...` line, when PREFECT_API_URL is not set (Prefect would
quietly start a temporary server of its own that nothing else reaches: `--local-server` asks for
that on purpose), when the keystore cannot be opened, and when the master key decrypts none of
its keys (every run would fail on it).

Every flow run it starts sends Prefect's flow-run heartbeat every HEARTBEAT_FREQUENCY_S (30 s, the
least Prefect 3.9 allows), which keyrelay's crash automation (`keyrelay automations apply`) relies
on: a run whose heartbeat stops is marked Crashed and resumed from its checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.settings import (
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    get_current_settings,
    temporary_settings,
)

from flows.agent_run import agent_run
from flows.recovery import HEARTBEAT_FREQUENCY_S
from keystore import ConfigError, KeyrelayError, open_keystore
from keystore.decryptable import check_master_key

__all__ = ["DEPLOYMENT_NAME", "build_deployment", "check_keystore", "check_prefect_api", "main"]

log = logging.getLogger(__name__)
NO_API_URL = (
    "PREFECT_API_URL is not set: serving would register the deployment with a temporary Prefect "
    "server started in this process, which no worker, `keyrelay run` or UI elsewhere reaches; "
    "set PREFECT_API_URL to your Prefect server (e.g. http://127.0.0.1:4200/api for `prefect "
    "server start`), or pass --local-server to run against a local one on purpose"
)

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


def check_prefect_api(*, local_server: bool) -> None:
    """ConfigError unless Prefect has an API URL (from the environment or the active profile),
    or a local server was asked for."""
    if get_current_settings().api.url is None and not local_server:
        raise ConfigError(NO_API_URL)


def check_keystore() -> None:
    """The keystore opens, and the master key decrypts at least one of its keys (when it has
    any); keys it cannot decrypt are named in a warning (runs here skip them)."""
    store = open_keystore()
    try:
        undecryptable = store.db.read(functools.partial(check_master_key, master=store.master))
    finally:
        store.close()
    if undecryptable:
        log.warning(
            "keys %s cannot be decrypted with the master key in use (%s); runs served here "
            "skip them",
            ", ".join(map(str, sorted(undecryptable))),
            store.master.source,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__)
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name")
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once")
    parser.add_argument(
        "--local-server",
        action="store_true",
        help="without PREFECT_API_URL, start a temporary Prefect server on this machine's "
        "local Prefect database",
    )
    args = parser.parse_args(argv)
    try:
        check_prefect_api(local_server=args.local_server)
        check_keystore()
    except KeyrelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    local = args.local_server and get_current_settings().api.url is None
    with (
        temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True})
        if local
        else contextlib.nullcontext()
    ):
        serve(
            build_deployment(args.name),
            limit=args.limit,
            query_seconds=QUERY_SECONDS,
            prefetch_seconds=PREFETCH_SECONDS,
            pause_on_shutdown=False,
            heartbeat_seconds=HEARTBEAT_FREQUENCY_S,  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY per run
        )


if __name__ == "__main__":
    main()
