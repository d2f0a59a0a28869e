"""Run the emulator over real sockets: in the foreground (`run_emulator`) or, for tests, in a
background thread on a free port (`serve_emulator`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from api.emulator.admin_client import EmulatorAdmin
from api.emulator.app import create_emulator_app
from api.emulator.clock import Clock, system_clock
from api.emulator.config import EmulatorConfig
from api.emulator.state import EmulatorState

__all__ = ["RunningEmulator", "run_emulator", "serve_emulator"]

_START_TIMEOUT_S = 10.0
# uvicorn closes an idle connection after 5 s by default. A client that waits out a rate-limit
# window of about that length and then reuses its pooled connection races the close and may see
# "Server disconnected" (aiohttp, which LiteLLM uses, does); real API front-ends keep idle
# connections far longer than any window a test or benchmark waits.
KEEP_ALIVE_S = 120


def _uvicorn_config(app: FastAPI, **kwargs: object) -> uvicorn.Config:
    # The app sets `Date` itself from the emulator's clock (a scripted skew must show there);
    # uvicorn's own would duplicate it. No access log: paths only, but keep the output quiet.
    return uvicorn.Config(
        app,
        date_header=False,
        server_header=False,
        access_log=False,
        log_level="warning",
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=KEEP_ALIVE_S,
        **kwargs,  # type: ignore[arg-type]
    )


def run_emulator(
    host: str, port: int, config: EmulatorConfig | None = None, *, clock: Clock = system_clock
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    app = create_emulator_app(config, clock=clock)
    uvicorn.Server(_uvicorn_config(app, host=host, port=port)).run()


@dataclass(frozen=True)
class RunningEmulator:
    base_url: str  # for ANTHROPIC_BASE_URL / anthropic.Anthropic(base_url=...)
    admin: EmulatorAdmin
    state: EmulatorState  # in-process view (the admin endpoints show the same)
    app: FastAPI

    @property
    def openai_base_url(self) -> str:
        """For OPENAI_BASE_URL / openai.OpenAI(base_url=...): the OpenAI SDK wants `/v1`."""
        return f"{self.base_url}/v1"


@contextmanager
def serve_emulator(
    config: EmulatorConfig | None = None, *, clock: Clock = system_clock, host: str = "127.0.0.1"
) -> Iterator[RunningEmulator]:
    """Start the emulator on a free port in a background thread; stop it on exit."""
    app = create_emulator_app(config, clock=clock)
    # Bind before starting, so the port is known and no other process can take it meanwhile.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so; with proto 0 every response stalls ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(app))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"emulator:{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the emulator did not start on {host}:{port}")
        time.sleep(0.01)
    base_url = f"http://{host}:{port}"
    admin = EmulatorAdmin(base_url)
    try:
        yield RunningEmulator(base_url=base_url, admin=admin, state=app.state.emulator, app=app)
    finally:
        admin.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
