"""Lease: a time-limited right to use one key. The only door to a key's plaintext."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class Lease:
    """A held slot of a key. `secret()` decrypts on demand; the plaintext is never stored here,
    so a Lease can be logged, printed or pickled without leaking anything (pickling drops the
    decryptor: an unpickled Lease cannot reveal its secret)."""

    id: str
    key_id: int
    key_name: str
    provider: str
    holder: str
    acquired_at: datetime
    expires_at: datetime
    _reveal: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def secret(self) -> str:
        """The key's plaintext. Use it at once (build a client, fill a child's environment)."""
        if self._reveal is None:
            raise RuntimeError(f"lease {self.id} was not issued by a keystore in this process")
        return self._reveal()

    def __getstate__(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "_reveal"}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_reveal", None)
