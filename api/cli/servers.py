"""`keyrelay api` and `keyrelay emulate`: long-running servers in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.errors import CliInputError

__all__ = ["register"]


def serve_api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API (uvicorn) until Ctrl-C. Refuses to start without KEYRELAY_API_TOKEN."""
    import uvicorn

    from api.app import create_app

    app = create_app()  # fails here, before binding, when no token is configured
    uvicorn.run(app, host=host, port=port)


def emulate(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="EmulatorConfig as a JSON file."),
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="Limit every key to this many requests per window.")
    ] = None,
    input_tokens: Annotated[
        int | None, typer.Option(help="Limit every key to this many input tokens per window.")
    ] = None,
    window_s: Annotated[
        float | None,
        typer.Option(help="Window of --requests / --input-tokens, in seconds (default 60)."),
    ] = None,
    agent_steps: Annotated[
        int | None,
        typer.Option(
            help="Answer requests that declare tools with N Bash steps, each appending "
            "step<i> to agent-steps.txt in the client's directory, then a final text."
        ),
    ] = None,
    agent_script: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="An AgentScript as a JSON file."),
    ] = None,
) -> None:
    """Serve the Anthropic/OpenAI provider emulator (with real rate-limit behaviour).

    Flags win over --config. Watch it with `curl http://HOST:PORT/_admin/keys`.
    """
    from api.emulator import EmulatorConfig, run_emulator
    from api.emulator.quick_config import QuickOptionError, QuickOptions, config_summary

    settings = EmulatorConfig()
    if config is not None:
        settings = EmulatorConfig.model_validate_json(config.read_text())
    options = QuickOptions(
        requests=requests,
        input_tokens=input_tokens,
        window_s=window_s,
        agent_steps=agent_steps,
        agent_script=agent_script,
    )
    try:
        settings = options.apply(settings)
    except QuickOptionError as exc:
        raise CliInputError(str(exc)) from exc
    typer.echo(f"emulator on http://{host}:{port}: {config_summary(settings)}")
    run_emulator(host, port, settings)


def register(app: typer.Typer) -> None:
    app.command("api")(serve_api)
    app.command("emulate")(emulate)
