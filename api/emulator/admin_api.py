"""Admin endpoints (`/_admin`, no auth: for tests and benchmarks): counters, windows, log, and
runtime changes of limits, faults and the agent script. Nothing here returns a full key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from api.emulator.agent_script import AgentScript
from api.emulator.config import FaultRule, LimitRule, WindowLimit
from api.emulator.reports import BucketReport, KeyCounters, LogEntry, StateReport
from api.emulator.state import EmulatorState

__all__ = ["AgentUpdate", "FaultsUpdate", "LimitsUpdate", "ResetRequest", "admin_router"]


class LimitsUpdate(BaseModel):
    limits: list[LimitRule] = Field(default_factory=list)
    ip_limit: WindowLimit | None = None


class FaultsUpdate(BaseModel):
    faults: list[FaultRule] = Field(default_factory=list)


class AgentUpdate(BaseModel):
    agent: AgentScript | None = None  # None: plain text replies only


class ReplyDelayUpdate(BaseModel):
    seconds: float = Field(ge=0, le=60)


class ResetRequest(BaseModel):
    restore_config: bool = False  # also drop runtime changes of limits/faults/agent


def admin_router(state: EmulatorState) -> APIRouter:
    router = APIRouter(prefix="/_admin", tags=["admin"])

    @router.get("/state")
    def get_state() -> StateReport:
        """Everything at once: the emulator's clock, per-key counters and every window."""
        return state.report()

    @router.get("/keys")
    def list_keys() -> list[KeyCounters]:
        """Per-key counters (by fingerprint): requests, served, 429s with their times."""
        return state.key_counters()

    @router.get("/keys/{key_fingerprint}")
    def get_key(key_fingerprint: str) -> KeyCounters:
        for counters in state.key_counters():
            if counters.key_fingerprint == key_fingerprint:
                return counters
        raise HTTPException(status_code=404, detail="no request seen from this key")

    @router.get("/buckets")
    def list_buckets() -> list[BucketReport]:
        """Each window owner and what every one of its windows actually served."""
        return state.bucket_reports()

    @router.get("/log")
    def get_log(limit: int | None = Query(default=None, ge=1)) -> list[LogEntry]:
        """The request log, oldest first (`limit`: only the last N)."""
        return state.log_entries(limit=limit)

    @router.get("/config")
    def get_config() -> dict[str, Any]:
        """The config in force (keys appear as fingerprints only)."""
        return state.config.model_dump(mode="json", exclude_none=True)

    @router.post("/limits")
    def set_limits(update: LimitsUpdate) -> dict[str, Any]:
        """Replace all limits (and the IP-wide one). Windows keep what they already served."""
        state.set_limits(limits=update.limits, ip_limit=update.ip_limit)
        return get_config()

    @router.post("/faults")
    def set_faults(update: FaultsUpdate) -> dict[str, Any]:
        """Replace all scripted faults (their `times` counters start afresh)."""
        state.set_faults(update.faults)
        return get_config()

    @router.post("/agent")
    def set_agent(update: AgentUpdate) -> dict[str, Any]:
        """Replace the agent script (`agent: null` stops playing one). Moves depend only on each
        request's conversation, so nothing else needs resetting."""
        state.set_agent(update.agent)
        return get_config()

    @router.post("/reply-delay")
    def set_reply_delay(update: ReplyDelayUpdate) -> dict[str, Any]:
        """Make every answer wait `seconds` (real time) from now on."""
        state.set_reply_delay(update.seconds)
        return get_config()

    @router.post("/reset")
    def reset(request: ResetRequest | None = None) -> dict[str, Any]:
        """Forget counters, windows and the log."""
        state.reset(restore_config=bool(request and request.restore_config))
        return get_config()

    return router
