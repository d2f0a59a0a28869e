"""The issue's targets for keyrelay, as data. Each is judged on the worst repeat (every repeat
must meet it), except the comparison with LiteLLM Router, which compares medians."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.goodput.summary import Spread, Summary
from bench.goodput.workloads import KEYS

__all__ = ["Target", "Verdict", "judge"]

KEYRELAY = ("keyrelay-pool", "keyrelay-pool-pg", "keyrelay-flows")
LITELLM = ("litellm-shuffle", "litellm-usage-v2")


@dataclass(frozen=True)
class Target:
    text: str
    workload: str | None  # None: every workload run
    measure: Callable[[Summary], Spread | None]
    limit: float
    unit: str = ""


@dataclass(frozen=True)
class Verdict:
    system: str
    workload: str
    target: str
    measured: Spread
    met: bool
    unit: str


TARGETS = (
    Target("429s: at most 1 per key", "requests", lambda s: s.refusals, 1 * KEYS),
    Target("makespan within 3% of the oracle", "requests", lambda s: s.over_oracle, 1.03, "x"),
    Target("429s: at most 2 per key", "input_tokens", lambda s: s.refusals, 2 * KEYS),
    Target("makespan within 5% of the oracle", "input_tokens", lambda s: s.over_oracle, 1.05, "x"),
    Target("client CPU per finished call <= 3 ms", None, lambda s: s.cpu_ms_per_call, 3.0, " ms"),
    Target("p50 latency added per attempt <= 5 ms", None, lambda s: s.added_p50_ms, 5.0, " ms"),
)


def _ahead_of_litellm(summaries: dict[tuple[str, str], Summary]) -> list[Verdict]:
    verdicts = []
    for (workload, system), summary in sorted(summaries.items()):
        peers = [summaries[(workload, p)] for p in LITELLM if (workload, p) in summaries]
        if system not in KEYRELAY or workload not in ("requests", "input_tokens") or not peers:
            continue
        best_peer = min(peer.makespan_s.median for peer in peers)
        verdicts.append(
            Verdict(
                system=system,
                workload=workload,
                target=f"median makespan below LiteLLM Router's best median ({best_peer:.1f} s)",
                measured=summary.makespan_s,
                met=summary.makespan_s.median < best_peer,
                unit=" s",
            )
        )
    return verdicts


def judge(summaries: dict[tuple[str, str], Summary]) -> list[Verdict]:
    verdicts = []
    for (workload, system), summary in sorted(summaries.items()):
        if system not in KEYRELAY:
            continue
        for target in TARGETS:
            measured = target.measure(summary)
            if measured is None or target.workload not in (None, workload):
                continue
            verdicts.append(
                Verdict(
                    system=system,
                    workload=workload,
                    target=target.text,
                    measured=measured,
                    met=measured.high <= target.limit,
                    unit=target.unit,
                )
            )
    verdicts += _ahead_of_litellm(summaries)
    workloads = ("requests", "input_tokens", "org_group")
    return sorted(
        verdicts,
        key=lambda v: (KEYRELAY.index(v.system), workloads.index(v.workload)),
    )
