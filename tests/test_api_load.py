"""A short run of bench/api_load.py: a real `keyrelay api` process under 50 concurrent clients
must answer every request, only with 200 or 429, never a 5xx, and let no client past its limit.
No timing is asserted: how many requests fit in the run depends on the machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench" / "api_load.py"
CLIENTS = 50
LIMITED_PER_CLIENT = 10  # the default KEYRELAY_API_RATE_LIMIT, 10/minute, in a run under a minute


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("api_load", module)
    spec.loader.exec_module(module)
    return module


def test_the_api_under_load_answers_only_200_and_429() -> None:
    bench = load_bench()
    distinct = sys.platform.startswith("linux")

    measured, limited = bench.run(clients=CLIENTS, seconds=3, distinct_addresses=distinct)

    for phase in (measured, limited):
        assert phase.requests >= CLIENTS, phase.name  # every client got answers
        assert dict(phase.transport_errors) == {}, phase.name
        assert phase.server_errors == 0, phase.name
        assert set(phase.statuses) <= {200, 429}, (phase.name, phase.statuses)
    assert measured.statuses[429] == 0  # the limit was set out of reach
    budgets = CLIENTS if distinct else 1
    assert 0 < limited.statuses[200] <= budgets * LIMITED_PER_CLIENT
