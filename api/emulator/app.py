"""The emulator's FastAPI app: both provider front-ends and the admin endpoints on one port."""

from __future__ import annotations

from fastapi import FastAPI

from api.emulator.admin_api import admin_router
from api.emulator.anthropic_api import anthropic_router
from api.emulator.clock import Clock, system_clock
from api.emulator.config import EmulatorConfig
from api.emulator.openai_api import openai_router
from api.emulator.state import EmulatorState

__all__ = ["create_emulator_app"]


def create_emulator_app(
    config: EmulatorConfig | None = None, *, clock: Clock = system_clock
) -> FastAPI:
    """An Anthropic- and OpenAI-compatible provider with real rate-limit behaviour.

    `app.state.emulator` is the `EmulatorState`, for in-process inspection.
    """
    state = EmulatorState(config=config or EmulatorConfig(), clock=clock)
    app = FastAPI(title="keyrelay provider emulator", docs_url=None, redoc_url=None)
    app.state.emulator = state
    app.include_router(anthropic_router(state))
    app.include_router(openai_router(state))
    app.include_router(admin_router(state))
    return app
