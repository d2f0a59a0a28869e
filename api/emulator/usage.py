"""What a request costs (`Usage`), what a window owner served (`Served`) and what it decided
about a request (`Decision`, one `DimensionState` per capped dimension). Shared by the window
kinds (windows.py: fixed and sliding; token_bucket.py: continuously refilling buckets)."""

from __future__ import annotations

from dataclasses import dataclass

from api.emulator.config import WindowLimit

__all__ = ["DIMENSIONS", "Decision", "DimensionState", "Served", "Usage", "capped"]

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass(frozen=True)
class Usage:
    """What one request costs. Output is known up front because replies are deterministic."""

    input_tokens: int
    output_tokens: int
    requests: int = 1

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def get(self, dimension: str) -> int:
        return int(getattr(self, dimension))


@dataclass(frozen=True)
class Served:
    at: float
    usage: Usage
    key_fingerprint: str
    limit: WindowLimit  # the limit in force when served: reports judge each request by it


@dataclass(frozen=True)
class DimensionState:
    dimension: str
    limit: int
    remaining: int
    reset_at: float  # epoch seconds at which this dimension next gains room


@dataclass(frozen=True)
class Decision:
    admitted: bool
    too_large: bool  # a cap is below this single request's cost: waiting can never help
    retry_at: float | None  # when the refused request would fit (None if admitted or too large)
    states: tuple[DimensionState, ...]  # after the request when admitted, as of now when not
    utilization: float  # 0..1, the fullest dimension


def capped(limit: WindowLimit) -> list[tuple[str, int]]:
    """(dimension, cap) of every dimension the limit caps, in DIMENSIONS order."""
    caps = ((dimension, getattr(limit, dimension)) for dimension in DIMENSIONS)
    return [(dimension, cap) for dimension, cap in caps if cap is not None]
