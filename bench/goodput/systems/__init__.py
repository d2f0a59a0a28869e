"""The systems under comparison, by name (`SYSTEMS`); each lives in its own module and is
imported only in the child process that runs it (LiteLLM and Prefect are slow to import)."""

from __future__ import annotations

import importlib

from bench.goodput.systems.base import RunSpec, System

__all__ = ["DEFAULT_SYSTEMS", "SYSTEMS", "RunSpec", "System", "keystore_backend", "make_system"]

# name -> ("module:class", the keystore it needs: None, "sqlite" or "postgres")
SYSTEMS: dict[str, tuple[str, str | None]] = {
    "oracle": ("bench.goodput.systems.oracle:Oracle", None),
    "naive": ("bench.goodput.systems.naive:NaiveRotation", None),
    "litellm-shuffle": ("bench.goodput.systems.litellm_router:SimpleShuffleRouter", None),
    "litellm-usage-v2": ("bench.goodput.systems.litellm_router:UsageBasedRouter", None),
    "keyrelay-pool": ("bench.goodput.systems.keyrelay_pool:KeyrelayPool", "sqlite"),
    "keyrelay-pool-pg": ("bench.goodput.systems.keyrelay_pool:KeyrelayPool", "postgres"),
    "keyrelay-flows": ("bench.goodput.systems.keyrelay_flows:KeyrelayFlows", "sqlite"),
}
DEFAULT_SYSTEMS = (
    "oracle",
    "naive",
    "litellm-shuffle",
    "litellm-usage-v2",
    "keyrelay-pool",
    "keyrelay-flows",
)


def keystore_backend(system: str) -> str | None:
    return SYSTEMS[system][1]


def make_system(spec: RunSpec) -> System:
    module_name, _, class_name = SYSTEMS[spec.system][0].partition(":")
    cls: type[System] = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)
