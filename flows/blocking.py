"""Blocking keystore calls from async flows: run them off the event loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["in_thread"]

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking keystore call off the event loop (the keystore is synchronous)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
