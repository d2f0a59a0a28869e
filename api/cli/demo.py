"""`keyrelay demo`: a local Prefect server, the emulator, three keys and a serve process; more
runs than the keys allow, shown live; a summary; everything stopped on exit (see api/demo/)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from api.cli.errors import CliInputError
from api.cli.output import emit_json
from api.demo.options import AGENTS, DemoOptions

__all__ = ["register"]

_DEFAULT = DemoOptions()
_JOB = DemoOptions.for_agent("claude-code")


def _defaults(field: str) -> str:
    """The default for the emulated agents, and the claude-code demo's when it differs."""
    plain, job = getattr(_DEFAULT, field), getattr(_JOB, field)
    return f"[default: {plain:g}; {job:g} with claude-code]" if plain != job else ""


def demo(
    runs: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=50,
            help=f"Flow runs to launch. {_defaults('runs')}",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=20,
            help=f"Turns per run. {_defaults('steps')}",
        ),
    ] = None,
    window: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            max=600.0,
            help=f"Each key's rate-limit window, seconds. {_defaults('window_s')}",
        ),
    ] = None,
    requests: Annotated[
        int, typer.Option(min=1, max=100, help="Requests each key may make per window.")
    ] = _DEFAULT.requests,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=20,
            help=f"Flow runs the serve process runs at once. {_defaults('limit')}",
        ),
    ] = None,
    agent: Annotated[
        str,
        typer.Option(
            help="anthropic or openai (emulated), or claude-code: the real claude CLI on a "
            f"job of {_JOB.job_steps} tool calls in one turn, in a temporary directory."
        ),
    ] = _DEFAULT.agent,
    timeout: Annotated[
        float, typer.Option(min=10.0, help="Fail when the runs are not done after this (s).")
    ] = _DEFAULT.timeout_s,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave it all running (Prefect UI) until Ctrl-C.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Summary as JSON on stdout; progress on stderr.")
    ] = False,
) -> None:
    """Watch runs rotate keys on 429s, wait as AwaitingRateLimit and resume, all on this machine
    (a temporary Prefect server and provider emulator; nothing is left running afterwards)."""
    from api.demo.session import run_demo
    from api.demo.summary import print_summary

    if agent not in AGENTS:
        raise CliInputError(f"--agent: expected one of {', '.join(AGENTS)}, got {agent!r}")
    options = DemoOptions.for_agent(
        agent,  # one of AGENTS, checked above
        runs=runs,
        steps=steps,
        window_s=window,
        requests=requests,
        limit=limit,
        timeout_s=timeout,
    )
    width = None if sys.stdout.isatty() else 120
    progress = Console(highlight=False, stderr=json_output, width=width)
    try:
        summary = run_demo(
            options,
            console=progress,
            keep=keep,
            on_summary=lambda s: emit_json(s) if json_output else print_summary(s, progress),
        )
    except KeyboardInterrupt:
        if not keep:  # with --keep, Ctrl-C is how the demo ends
            Console(stderr=True).print("interrupted")
        raise typer.Exit(0 if keep else 130) from None
    if summary.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
