"""A case-insensitive, read-only view of response headers, built from whatever the caller holds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# A dict, an httpx.Headers, a list of (name, value) pairs (str or bytes, as ASGI has them), or None.
HeadersLike = Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[Any, Any]] | None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")  # RFC 9110: field values are octets, not UTF-8
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return str(value)  # a caller's {"retry-after": 12}
        except ValueError:  # an integer over 4300 digits
            return None
    return None


def _pairs(raw: object) -> Iterable[object]:
    if raw is None or isinstance(raw, str | bytes | bytearray):
        return ()
    multi_items = getattr(raw, "multi_items", None)
    if callable(multi_items):  # httpx.Headers: keeps repeated fields apart instead of joining them
        return multi_items()
    if isinstance(raw, Mapping):
        return raw.items()
    if isinstance(raw, Iterable):
        return raw
    return ()


class Headers:
    """Header names are lower-cased; the first of repeated fields wins; junk entries are skipped."""

    __slots__ = ("_values",)

    def __init__(self, raw: object = None) -> None:
        values: dict[str, str] = {}
        # A broken iterable (or a mapping whose items() raises) keeps what it gave before failing.
        with contextlib.suppress(Exception):
            for item in _pairs(raw):
                if not isinstance(item, tuple | list) or len(item) != 2:
                    continue
                name, value = _text(item[0]), _text(item[1])
                if name is None or value is None:
                    continue
                values.setdefault(name.strip().lower(), value.strip())
        self._values = values

    def get(self, name: str) -> str | None:
        return self._values.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def names(self) -> Iterator[str]:
        return iter(self._values)

    def __repr__(self) -> str:
        return f"Headers({self._values!r})"
