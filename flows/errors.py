"""What an `agent-run` raises when it cannot finish.

    KeyrelayError
    └── RunFailed   the run cannot go on; the message says why (for a spent pool it names every
                    key and when each would reset)

Everything between attempts (rotations, backoffs, waits, deferrals, fallbacks) is an outcome,
not an exception: see flows/outcome.py.
"""

from __future__ import annotations

from keystore import KeyrelayError

__all__ = ["RunFailed"]


class RunFailed(KeyrelayError):
    """The run cannot finish: its message names the keys and when each would reset."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
