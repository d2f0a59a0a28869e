"""Emulator fixtures, as a plugin: a test module that needs them says

    pytest_plugins = ["tests.emulator.fixtures"]

`emulator` is one server per module on a `ManualClock` (windows move only when a test advances
the clock, so socket tests need no sleeps); `emu` is the same server reset to its start config
for each test; `live_emulator` runs on the system clock, for clients that compare resets with
real time (the claude CLI), and `live_emu` is that one reset for each test. `claude_bin` is the
real CLI (tests/emulator/claude_cli.py drives it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.emulator import EmulatorConfig, ManualClock, RunningEmulator, serve_emulator
from tests.emulator.claude_cli import require_claude_bin

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the NOW of shared/RATE_LIMITS.md's vectors


@pytest.fixture(scope="module")
def emulator_clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="module")
def emulator(emulator_clock: ManualClock) -> Iterator[RunningEmulator]:
    with serve_emulator(EmulatorConfig(), clock=emulator_clock) as running:
        yield running


@pytest.fixture
def emu(emulator: RunningEmulator) -> RunningEmulator:
    emulator.admin.reset(restore_config=True)
    return emulator


@pytest.fixture(scope="module")
def live_emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(EmulatorConfig()) as running:
        yield running


@pytest.fixture
def live_emu(live_emulator: RunningEmulator) -> RunningEmulator:
    live_emulator.admin.reset(restore_config=True)
    return live_emulator


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    return require_claude_bin()
