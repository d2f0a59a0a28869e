"""LiteLLM's Router, as its documentation sets it up for several keys of one model: a deployment
per key (`api_base` = the emulator, `rpm`/`tpm` = the key's limit per minute), retries off in the
router (`num_retries=0`), and a client loop that sleeps the hinted delay on a rate-limit error
(the 429's `retry-after`, or the router's cooldown when it has no deployment left) and tries
again. Two routing strategies: `simple-shuffle` (the default) and `usage-based-routing-v2`
(routes by the rpm/tpm it has counted this minute).

How the limits translate: LiteLLM counts per minute, so a window of N per W seconds becomes
N * 60 / W per minute; it has no input-token limit, so the input-token bucket becomes `tpm`
(which LiteLLM counts on input + output tokens); it has no shared limit, so an org-wide window is
split evenly over the keys' deployments.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.goodput.conversation import MAX_TOKENS, MODEL, Dialogue, job_prompt
from bench.goodput.systems.base import RunSpec, System
from bench.goodput.trace import Trace
from bench.goodput.workloads import LimitOwner

__all__ = ["SimpleShuffleRouter", "UsageBasedRouter"]

MODEL_GROUP = "claude"
_NO_HINT_S = 1.0


def _per_minute(owner: LimitOwner) -> dict[str, int]:
    per_key = owner.cap / len(owner.keys) * 60 / owner.window_s
    return {"rpm" if owner.dimension == "requests" else "tpm": max(1, round(per_key))}


def hinted_delay_s(exc: BaseException) -> float:
    """The delay a rate-limit error asks for: `retry-after`, else the router's cooldown."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        try:
            return max(0.0, float(headers.get("retry-after", "")))
        except ValueError:
            pass
    cooldown = getattr(exc, "cooldown_time", None)
    return float(cooldown) if isinstance(cooldown, int | float) else _NO_HINT_S


class _LiteLLMRouter(System):
    strategy = ""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        # The bundled model list: no fetch from the internet at import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm
        from litellm.types.router import RouterRateLimitError

        litellm.suppress_debug_info = True
        self._rate_limited: tuple[type[BaseException], ...] = (
            litellm.RateLimitError,
            RouterRateLimitError,
        )
        deployments: list[dict[str, Any]] = [
            {
                "model_name": MODEL_GROUP,
                "litellm_params": {
                    "model": f"anthropic/{MODEL}",
                    "api_key": key,
                    "api_base": spec.base_url,
                    **_per_minute(owner),
                },
            }
            for owner in self.workload.owners
            for key in owner.keys
        ]
        self.router = litellm.Router(
            model_list=deployments, routing_strategy=self.strategy, num_retries=0
        )

    async def _complete(self, messages: list[dict[str, Any]]) -> str:
        response = await self.router.acompletion(
            model=MODEL_GROUP, messages=messages, max_tokens=MAX_TOKENS
        )
        return str(response.choices[0].message.content or "")

    async def open(self) -> None:
        await self._complete([{"role": "user", "content": job_prompt(0)}])

    async def run_job(self, job: int, trace: Trace) -> None:
        dialogue = Dialogue(job, self.workload.turns)
        while not dialogue.done:
            try:
                reply = await self._complete(dialogue.messages())
            except self._rate_limited as limited:
                await asyncio.sleep(hinted_delay_s(limited))
                continue
            dialogue.answered(reply)


class SimpleShuffleRouter(_LiteLLMRouter):
    label = "LiteLLM Router, simple-shuffle"
    strategy = "simple-shuffle"


class UsageBasedRouter(_LiteLLMRouter):
    label = "LiteLLM Router, usage-based-routing-v2"
    strategy = "usage-based-routing-v2"
