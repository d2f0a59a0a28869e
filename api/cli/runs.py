"""`keyrelay serve` and `keyrelay run`: agent runs through Prefect deployments.

The CLI never imports the flows: `serve` hands the process over to `python -m deployments.serve`
(so SIGTERM / Ctrl-C reach Prefect's runner directly), and `run` asks the Prefect API to start a
run of the deployment, exactly as `prefect deployment run` does.

Both need PREFECT_API_URL (or a Prefect profile that sets it). Without it Prefect's default
profile quietly starts a temporary server in the process, which nothing else reaches; both
refuse unless `--local-server` asks for that on purpose (it uses this machine's local Prefect
database, so `serve --local-server` and `run --local-server` on one machine see each other)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console

from api.cli.errors import CliInputError
from api.cli.follow import follow_run
from api.cli.store import open_store

__all__ = ["register"]

DEPLOYMENT = "agent-run/default"
AGENTS = ("claude-code", "anthropic", "openai")
console = Console()
LocalServer = Annotated[
    bool,
    typer.Option(
        "--local-server",
        help="Without PREFECT_API_URL, use a temporary Prefect server on this machine's local "
        "Prefect database instead of refusing.",
    ),
]


class NoPrefectApi(CliInputError):
    """PREFECT_API_URL is not set and no local server was asked for."""


def serve(
    limit: Annotated[int, typer.Option(min=1, help="Flow runs at once, each its own process.")] = 4,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "default",
    local_server: LocalServer = False,
) -> None:
    """Serve the agent-run deployment in the foreground until SIGTERM / Ctrl-C (needs
    PREFECT_API_URL pointing at a Prefect server, and the KEYRELAY_* settings of the keystore)."""
    argv = [sys.executable, "-m", "deployments.serve", "--limit", str(limit), "--name", name]
    if local_server:
        argv.append("--local-server")
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 (our own interpreter and module)


def run(
    prompt: Annotated[str, typer.Argument(help="The first turn's prompt.")],
    agent: Annotated[str, typer.Option(help=f"One of: {', '.join(AGENTS)}.")] = "claude-code",
    model: Annotated[str | None, typer.Option(help="Model name (agent default if unset).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Turns in the conversation.")] = 1,
    followup: Annotated[
        list[str] | None, typer.Option(help="Prompt of turn 2, 3, ... (repeat the option).")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Free text shown with the run.")] = None,
    workdir: Annotated[
        str | None,
        typer.Option(help="claude-code: an existing directory on the worker to work in."),
    ] = None,
    allowed_tools: Annotated[
        list[str] | None,
        typer.Option(
            help='claude-code: a tool rule the agent may use, e.g. "Bash(git:*)" (repeat).'
        ),
    ] = None,
    disallowed_tools: Annotated[
        list[str] | None, typer.Option(help="claude-code: a tool rule it may not use (repeat).")
    ] = None,
    permission_mode: Annotated[
        str | None,
        typer.Option(help="claude-code: default, acceptEdits, plan or bypassPermissions."),
    ] = None,
    append_system_prompt: Annotated[
        str | None, typer.Option(help="claude-code: text appended to the system prompt.")
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option(min=1, help="claude-code: the CLI's own turns per run turn.")
    ] = None,
    add_dirs: Annotated[
        list[str] | None, typer.Option(help="claude-code: another directory it may use (repeat).")
    ] = None,
    deployment: Annotated[str, typer.Option(help="flow-name/deployment-name")] = DEPLOYMENT,
    wait: Annotated[
        bool, typer.Option(help="Follow the run (a line per attempt) until it ends, then print it.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    local_server: LocalServer = False,
) -> None:
    """Start an agent run through the Prefect API (like `prefect deployment run`)."""
    if agent not in AGENTS:
        raise CliInputError(f"--agent must be one of {', '.join(AGENTS)}, not {agent!r}")
    job = {
        "workdir": workdir,
        "allowed_tools": allowed_tools,
        "disallowed_tools": disallowed_tools,
        "permission_mode": permission_mode,
        "append_system_prompt": append_system_prompt,
        "max_turns": max_turns,
        "add_dirs": add_dirs,
    }
    given = {name: value for name, value in job.items() if value}
    if given and agent != "claude-code":
        names = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise CliInputError(f"{names}: only the claude-code agent takes these, not {agent}")
    with _prefect_api(local_server=local_server):
        _start_run(
            prompt,
            agent=agent,
            model=model,
            steps=steps,
            followup=followup,
            label=label,
            job=given,
            deployment=deployment,
            wait=wait,
            json_output=json_output,
        )


@contextlib.contextmanager
def _prefect_api(*, local_server: bool) -> Iterator[None]:
    """Refuse without PREFECT_API_URL unless a local server was asked for."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        get_current_settings,
        temporary_settings,
    )

    if get_current_settings().api.url is not None:
        yield
        return
    if not local_server:
        raise NoPrefectApi(
            "PREFECT_API_URL is not set: the run would be created on a temporary Prefect server "
            "that `keyrelay serve` does not watch; set PREFECT_API_URL to the server `keyrelay "
            "serve` uses (e.g. http://127.0.0.1:4200/api), or pass --local-server to use this "
            "machine's local Prefect database on purpose"
        )
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True}):
        yield


def _start_run(
    prompt: str,
    *,
    agent: str,
    model: str | None,
    steps: int,
    followup: list[str] | None,
    label: str | None,
    job: dict[str, Any],
    deployment: str,
    wait: bool,
    json_output: bool,
) -> None:
    parameters: dict[str, Any] = {"prompt": prompt, "agent": agent, "steps": steps}
    if model:
        parameters["model"] = model
    if followup:
        parameters["followups"] = followup
    if label:
        parameters["run_label"] = label
    parameters |= job
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
    assert isinstance(flow_run, FlowRun)  # called outside an event loop: not a coroutine
    if wait:
        # --json keeps stdout for the summary: the progress lines go to stderr then.
        progress = Console(stderr=True, highlight=False) if json_output else console
        flow_run = follow_run(flow_run.id, console=progress)
    state = flow_run.state
    summary: dict[str, Any] = {
        "flow_run_id": str(flow_run.id),
        "name": flow_run.name,
        "state": state.name if state else None,
    }
    turns: list[dict[str, Any]] = []
    if wait and state is not None and state.is_completed():
        # The run's conversation is in its checkpoint in the keystore (Prefect keeps no result).
        checkpoint = open_store().load_checkpoint(str(flow_run.id)) or {}
        turns = [
            {"turn": t["turn"], "agent": t["agent"], "key_id": t["key_id"], "reply": t["text"]}
            for t in checkpoint.get("turns", [])
        ]
        summary["turns"] = turns
    if json_output:
        import json

        print(json.dumps(summary, default=str))
        return
    console.print(f"flow run [bold]{flow_run.name}[/] ({flow_run.id}): {summary['state']}")
    for turn in turns:
        console.print(
            f"turn {turn['turn']} [{turn['agent']}, key {turn['key_id']}]: {turn['reply']}"
        )
    if wait and state is not None and not state.is_completed():
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("run")(run)
