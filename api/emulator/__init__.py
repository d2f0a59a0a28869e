"""Anthropic- and OpenAI-compatible provider emulator with real rate-limit behaviour.

    config = EmulatorConfig(limits=[LimitRule(key_prefix="sk-", requests=2, window_s=1)])
    with serve_emulator(config) as emu:
        anthropic.Anthropic(base_url=emu.base_url, api_key="sk-...", max_retries=0)
        emu.admin.key(api_key="sk-...").rate_limited
        emu.admin.set_agent(AgentScript(steps=[ToolStep.bash("echo step{step} >> log.txt")] * 3))

See CLAUDE_CLI_NOTES.md for how the real `claude` CLI talks to it (and runs its tool calls).
"""

from api.emulator.admin_client import EmulatorAdmin
from api.emulator.agent_script import AgentScript, ToolStep
from api.emulator.app import create_emulator_app
from api.emulator.clock import Clock, ManualClock, system_clock
from api.emulator.config import EmulatorConfig, FaultRule, KeyMatch, LimitRule, WindowLimit
from api.emulator.keys import fingerprint, mask
from api.emulator.replies import conversation_digest
from api.emulator.reports import BucketReport, KeyCounters, LogEntry, StateReport, WindowReport
from api.emulator.server import RunningEmulator, run_emulator, serve_emulator

__all__ = [
    "AgentScript",
    "BucketReport",
    "Clock",
    "EmulatorAdmin",
    "EmulatorConfig",
    "FaultRule",
    "KeyCounters",
    "KeyMatch",
    "LimitRule",
    "LogEntry",
    "ManualClock",
    "RunningEmulator",
    "StateReport",
    "ToolStep",
    "WindowLimit",
    "WindowReport",
    "conversation_digest",
    "create_emulator_app",
    "fingerprint",
    "mask",
    "run_emulator",
    "serve_emulator",
    "system_clock",
]
