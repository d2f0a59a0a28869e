"""What a system reports about its own run; the emulator's counters and log say the rest
(calls served, 429s, when each call was answered)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Trace"]

_MAX_ERRORS = 5


@dataclass
class Trace:
    system: str
    started_at: float  # epoch seconds: the common start signal
    finished_at: float = 0.0  # when the last job ended (or the run timed out)
    jobs_failed: int = 0
    cpu_s: float = 0.0  # the client process's CPU (all its threads) between the two
    # keyrelay only: from wanting a key to the request being sent, per attempt (sleeps for a
    # NoKeyAvailable.retry_at excluded), and the bookkeeping after each answer.
    added_s: list[float] = field(default_factory=list)
    bookkeeping_s: list[float] = field(default_factory=list)
    keystore_path: str | None = None  # "new" (acquire(input_tokens=), record_response) | "legacy"
    orchestrator_cpu_s: float | None = None  # the Prefect server's, for the flows
    errors: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"[:300]
        if text not in self.errors and len(self.errors) < _MAX_ERRORS:
            self.errors.append(text)
