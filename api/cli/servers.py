"""`keyrelay api` and `keyrelay emulate`: long-running servers in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
) -> None:
    """Serve the Anthropic/OpenAI provider emulator (with real rate-limit behaviour)."""
    from api.emulator import EmulatorConfig, run_emulator

    settings = EmulatorConfig()
    if config is not None:
        settings = EmulatorConfig.model_validate_json(config.read_text())
    run_emulator(host, port, settings)


def register(app: typer.Typer) -> None:
    app.command("api")(serve_api)
    app.command("emulate")(emulate)
