"""How the CLI prints: rich tables for people, `--json` (valid JSON on stdout, nothing else) for
scripts, one `error: ...` line on stderr for failures."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pydantic import BaseModel

    from keystore import KeyPublic

__all__ = ["JsonFlag", "console", "emit_json", "key_table", "print_key", "print_keys", "when"]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Piped output (logs, `| less`) gets room for every column instead of rich's 80-column default.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def emit_json(data: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """Models (or lists of them) as JSON on stdout: times in ISO 8601 UTC, secrets never present
    (the public models have none)."""
    if isinstance(data, dict):
        payload: Any = data
    elif isinstance(data, Sequence):
        payload = [item.model_dump(mode="json") for item in data]
    else:
        payload = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def key_table(keys: Iterable[KeyPublic], *, title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("id", "name", "provider", "masked", "state", "prio", "leases", "group"):
        table.add_column(
            column,
            justify="right" if column in ("id", "prio") else "left",
            overflow="fold",  # wrap, never cut: a cut masked form would mislead
        )
    table.add_column("cooling until")
    table.add_column("uses", justify="right")
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.provider,
            key.masked,
            key.state + (f" ({key.cooling_reason})" if key.cooling_reason else ""),
            str(key.priority),
            f"{key.active_leases}/{key.max_concurrency}",
            key.group or "-",
            when(key.cooling_until),
            str(key.uses),
        )
    return table


def print_keys(keys: Sequence[KeyPublic], *, as_json: bool, title: str | None = None) -> None:
    if as_json:
        emit_json(keys)
    elif keys:
        console.print(key_table(keys, title=title))
    else:
        console.print("no keys")


def print_key(key: KeyPublic, *, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json(key)
    else:
        console.print(f"{verb} key {key.id} ({key.name}, {key.provider}, {key.masked})")
