"""`keyrelay keys ...`: add, list, status, update, rm, reset, explain, limits, migrate."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from keystore import PoolStatus

from api.cli.errors import CliInputError
from api.cli.output import JsonFlag, console, emit_json, key_table, print_key, print_keys, when
from api.cli.store import open_store, read_secret

app = typer.Typer(help="Add, list, change and remove provider keys.", no_args_is_help=True)

_RESERVE_HELP = "Share of a subscription window to leave unused (0 to 0.9)."
KeyIdArg = Annotated[
    int, typer.Argument(metavar="ID", help="The key's id (see `keyrelay keys list`).")
]


@app.command("add")
def add_key(
    provider: Annotated[str, typer.Option(help="claude-code, anthropic or openai.")],
    name: Annotated[str, typer.Option(help="A name people recognise.")],
    priority: Annotated[int, typer.Option(help="Lower is preferred.")] = 100,
    max_concurrency: Annotated[int, typer.Option(help="Leases the key may hold at once.")] = 1,
    group: Annotated[str | None, typer.Option(help="Keys of one org/project share limits.")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Add it disabled.")] = False,
    reserve: Annotated[float, typer.Option(help=_RESERVE_HELP)] = 0.0,
    json_output: JsonFlag = False,
) -> None:
    """Add a key. The secret is read from stdin when piped, else from a hidden prompt."""
    secret = read_secret()
    key = open_store().add_key(
        name=name,
        provider=provider,
        secret=secret,
        priority=priority,
        max_concurrency=max_concurrency,
        enabled=not disabled,
        group=group,
        reserve=reserve,
    )
    print_key(key, as_json=json_output, verb="added")


@app.command("list")
def list_keys(
    provider: Annotated[str | None, typer.Option(help="Only this provider's keys.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Keys ordered by provider, priority, id (secrets masked)."""
    print_keys(open_store().list_keys(provider), as_json=json_output)


def _status_view(status: PoolStatus) -> Group:
    table = Table(title="pool")
    for column in ("provider", "total", "available", "busy", "cooling", "disabled"):
        table.add_column(column, justify="left" if column == "provider" else "right")
    table.add_column("earliest reset")
    for provider, counts in status.providers.items():
        numbers = (counts.total, counts.available, counts.busy, counts.cooling, counts.disabled)
        table.add_row(provider, *map(str, numbers), when(counts.earliest_reset))
    keys = key_table(status.keys, title="keys") if status.keys else Text("no keys")
    return Group(table, keys)


@app.command("status")
def pool_status(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.5, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    json_output: JsonFlag = False,
) -> None:
    """Per provider: available, busy, cooling and disabled keys, and the earliest reset."""
    store = open_store()
    if json_output:
        if watch:
            raise CliInputError("--watch shows a live table: leave out --json")
        emit_json(store.status())
        return
    if not watch:
        console.print(_status_view(store.status()))
        return
    with Live(_status_view(store.status()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_view(store.status()), refresh=True)
        except KeyboardInterrupt:
            pass


@app.command("update")
def update_key(
    key_id: KeyIdArg,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    priority: Annotated[int | None, typer.Option(help="Lower is preferred.")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Leases at once.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Enable or disable the key.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="New group ('' clears it).")] = None,
    reserve: Annotated[float | None, typer.Option(help=_RESERVE_HELP)] = None,
    secret_from_stdin: Annotated[
        bool,
        typer.Option("--secret-from-stdin", help="Replace the secret (stdin, or a hidden prompt)."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Allow disabling the provider's last enabled key.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Change some of a key's fields; the others keep their value."""
    changes: dict[str, object] = {
        field: value
        for field, value in (
            ("name", name),
            ("priority", priority),
            ("max_concurrency", max_concurrency),
            ("enabled", enabled),
            ("reserve", reserve),
        )
        if value is not None
    }
    if group is not None:
        changes["group"] = group or None
    if secret_from_stdin:
        changes["secret"] = read_secret("New secret")
    key = open_store().update_key(key_id, force=force, **changes)
    print_key(key, as_json=json_output, verb="updated")


@app.command("rm")
def remove_key(
    key_id: KeyIdArg,
    force: Annotated[
        bool, typer.Option("--force", help="Allow removing the provider's last enabled key.")
    ] = False,
) -> None:
    """Delete a key. The provider's last enabled key is refused unless --force."""
    open_store().delete_key(key_id, force=force)
    console.print(f"deleted key {key_id}")


@app.command("reset")
def reset_key(key_id: KeyIdArg, json_output: JsonFlag = False) -> None:
    """Clear a key's cooling and unusable marks (it works again)."""
    print_key(open_store().reset_key(key_id), as_json=json_output, verb="reset")


@app.command("explain")
def explain(
    provider: Annotated[str, typer.Argument(help="claude-code, anthropic or openai.")],
    input_tokens: Annotated[
        int | None, typer.Option(min=0, help="For a request of this many input tokens.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Which key the next lease would take, and why each other key would not be taken (with
    what each key's limit buckets have left)."""
    explanation = open_store().explain(provider, input_tokens=input_tokens)
    if json_output:
        emit_json(explanation)
        return
    table = Table(title=f"{provider}: next lease takes key {explanation.chosen or '-'}")
    table.add_column("id", justify="right")
    table.add_column("eligible")
    table.add_column("reason")
    for candidate in explanation.candidates:
        table.add_row(str(candidate.id), "yes" if candidate.eligible else "no", candidate.reason)
    console.print(table)


@app.command("limits")
def key_limits(
    provider: Annotated[str | None, typer.Option(help="Only this provider's keys.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """What each key's provider last said about its limits, until each bucket resets."""
    buckets = open_store().limits(provider)
    if json_output:
        emit_json(buckets)
        return
    table = Table(title="limits the providers reported")
    for column in ("key", "bucket", "remaining", "limit", "used", "in flight", "resets"):
        table.add_column(column, justify="left" if column in ("bucket", "resets") else "right")
    for b in buckets:
        table.add_row(
            str(b.key_id),
            b.bucket + (" (rejected)" if b.rejected else ""),
            "-" if b.remaining is None else f"{b.remaining:g}",
            "-" if b.limit is None else f"{b.limit:g}",
            "-" if b.utilization is None else f"{b.utilization:.0%}",
            str(b.leases_out),
            when(b.reset_at),
        )
    console.print(table if buckets else "no provider has reported a limit yet")


@app.command("migrate")
def migrate(json_output: JsonFlag = False) -> None:
    """Import CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY and OPENAI_API_KEY from the environment
    (each token once: a deleted import does not come back)."""
    added = open_store().migrate_env_tokens()
    if json_output:
        emit_json(added)
    elif added:
        print_keys(added, as_json=False, title="imported")
    else:
        console.print("nothing to import")
