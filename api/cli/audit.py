"""`keyrelay audit list|verify`: the hash-chained audit log."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from api.cli.output import JsonFlag, console, emit_json, when
from api.cli.store import open_store

app = typer.Typer(help="Read and verify the audit log.", no_args_is_help=True)


@app.command("list")
def list_events(
    limit: Annotated[int, typer.Option(help="At most this many (1-10000).")] = 50,
    key: Annotated[int | None, typer.Option("--key", help="Only this key's events.")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run's events.")] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this type, e.g. key_rate_limited.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Audit events, newest first."""
    events = open_store().audit_events(limit=limit, key_id=key, run_id=run, type=type_)
    if json_output:
        emit_json(events)
        return
    if not events:
        console.print("no events")
        return
    table = Table(title="audit")
    for column in ("id", "at", "type", "key", "run", "details"):
        table.add_column(column, justify="right" if column in ("id", "key") else "left")
    for event in events:
        table.add_row(
            str(event.id),
            when(event.at),
            event.type,
            str(event.key_id) if event.key_id is not None else "-",
            event.run_id or "-",
            json.dumps(event.details, sort_keys=True),
        )
    console.print(table)


@app.command("verify")
def verify(json_output: JsonFlag = False) -> None:
    """Check the hash chain; exit 1 when a row was edited, deleted or reordered."""
    report = open_store().verify_audit()
    if json_output:
        emit_json(
            {
                "ok": report.ok,
                "rows": report.rows,
                "first_bad_id": report.first_bad_id,
                "problem": report.problem,
            }
        )
    elif report.ok:
        console.print(f"audit chain intact ({report.rows} rows)")
    else:
        console.print(
            f"audit chain BROKEN at row {report.first_bad_id}: {report.problem} "
            f"({report.rows} rows verified before it)"
        )
    if not report.ok:
        raise typer.Exit(1)
