"""`keyrelay config show|set`: the RotationConfig every worker, the API and the CLI share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.table import Table

from api.cli.errors import CliInputError
from api.cli.output import JsonFlag, console, emit_json
from api.cli.store import open_store

if TYPE_CHECKING:
    from keystore import RotationConfig

app = typer.Typer(help="Show and change how the pool rotates and waits.", no_args_is_help=True)

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class ConfigInputError(CliInputError):
    """A KEY=VALUE argument that cannot be applied."""


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to typed RotationConfig changes: booleans as true/false/yes/no/1/0,
    numbers as numbers, the rest as text (the keystore validates ranges and choices)."""
    from keystore import RotationConfig

    fields = RotationConfig.model_fields
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigInputError(f"expected KEY=VALUE, got {pair!r}")
        if key not in fields:
            raise ConfigInputError(f"unknown config key {key!r}; known: {', '.join(fields)}")
        annotation = fields[key].annotation
        if annotation is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ConfigInputError(f"{key}: expected true/false, yes/no or 1/0, got {raw!r}")
            changes[key] = raw.lower() in _TRUE
        elif annotation in (int, float):
            try:
                changes[key] = float(raw) if annotation is float else int(raw)
            except ValueError:
                raise ConfigInputError(f"{key}: expected a number, got {raw!r}") from None
        else:
            choices = get_args(annotation)
            if choices and raw not in choices:
                raise ConfigInputError(f"{key}: expected one of {', '.join(choices)}, got {raw!r}")
            changes[key] = raw
    return changes


def _show(config: RotationConfig, *, as_json: bool) -> None:
    if as_json:
        emit_json(config)
        return
    table = Table(title="rotation config")
    table.add_column("key")
    table.add_column("value")
    table.add_column("meaning")
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        table.add_row(name, shown, info.description or "")
    console.print(table)


@app.command("show")
def show(json_output: JsonFlag = False) -> None:
    """The current rotation settings."""
    _show(open_store().config(), as_json=json_output)


@app.command("set")
def set_values(
    assignments: Annotated[
        list[str], typer.Argument(metavar="KEY=VALUE...", help="e.g. max_wait_s=3600")
    ],
    json_output: JsonFlag = False,
) -> None:
    """Change rotation settings (workers see the change within about a second)."""
    changes = parse_assignments(assignments)
    _show(open_store().update_config(**changes), as_json=json_output)
