"""What the demo sets up: three keys of one provider with different priorities, an emulator that
gives each key a few requests per short window, and more runs than those windows can serve at
once, so runs rotate on 429s, defer as AwaitingRateLimit and resume at the resets."""

from __future__ import annotations

import secrets
from typing import Any

from api.demo.options import DEMO_KEYS, JOB_FILE, DemoOptions
from api.emulator import AgentScript, EmulatorConfig, LimitRule
from keystore import KeyPublic, Keystore

__all__ = ["emulator_config", "run_parameters", "seed_keystore"]

# claude-code keys are API keys here (the CLI sends them as x-api-key): the emulator gives them
# the request windows an organisation's API keys have.
SECRET_PREFIX = {
    "anthropic": "sk-ant-api03-demo-",
    "openai": "sk-proj-demo-",
    "claude-code": "sk-ant-api03-demo-",
}
TOPICS = ("tides", "volcanoes", "glaciers", "comets", "coral reefs", "auroras", "deserts", "caves")


def emulator_config(options: DemoOptions) -> EmulatorConfig:
    """Each demo key its own fixed window of `requests` per `window_s` (no shared group)."""
    return EmulatorConfig(
        limits=[
            LimitRule(
                key_prefix=SECRET_PREFIX[options.agent],
                requests=options.requests,
                window_s=options.window_s,
            )
        ],
        reply_delay_s=options.reply_delay_s,
        agent=(
            AgentScript.appending_steps(options.job_steps, file_name=JOB_FILE)
            if options.agent == "claude-code"
            else None
        ),
    )


def seed_keystore(store: Keystore, options: DemoOptions) -> list[KeyPublic]:
    """Add the demo keys (random secrets the emulator accepts) and a RotationConfig that defers
    any wait longer than `inline_wait_max_s`."""
    store.update_config(inline_wait_max_s=options.inline_wait_max_s)
    return [
        store.add_key(
            name=name,
            provider=options.agent,
            secret=SECRET_PREFIX[options.agent] + f"{name}-" + secrets.token_hex(16),
            priority=priority,
            max_concurrency=options.key_concurrency,
        )
        for name, priority in DEMO_KEYS
    ]


def run_parameters(index: int, options: DemoOptions, *, job_dir: str) -> dict[str, Any]:
    """Parameters of the agent-run flow for run `index` (1-based)."""
    if options.agent == "claude-code":
        return {
            "prompt": (
                f"Work through the {options.job_steps} steps of the task: for each, append a line "
                f"`step<n>` to {JOB_FILE} with one Bash command."
            ),
            "agent": "claude-code",
            "run_label": f"demo-{index}",
            "workdir": job_dir,
            "allowed_tools": ["Bash"],
        }
    topic = TOPICS[(index - 1) % len(TOPICS)]
    followups = [f"Now a detail about {topic} most people miss (part {n})." for n in range(2, 5)]
    return {
        "prompt": f"In two sentences: what drives {topic}?",
        "agent": options.agent,
        "steps": options.steps,
        "followups": followups[: options.steps - 1],
        "run_label": f"demo-{index}",
    }
