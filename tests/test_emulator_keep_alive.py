"""The emulator keeps idle connections open longer than any rate-limit window a client waits
out, as real API front-ends do: with uvicorn's default of 5 s, a client reusing its pooled
connection after waiting a 5 s window raced the close ("Server disconnected" in aiohttp)."""

from __future__ import annotations

from api.emulator import create_emulator_app
from api.emulator.server import KEEP_ALIVE_S, _uvicorn_config


def test_idle_connections_outlive_a_minute_long_window() -> None:
    config = _uvicorn_config(create_emulator_app())
    assert config.timeout_keep_alive == KEEP_ALIVE_S >= 60
