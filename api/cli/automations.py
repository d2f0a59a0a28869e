"""`keyrelay automations apply|list|rm`: keyrelay's Prefect automations (crash recovery, alerts).

One idempotent command rather than YAML for `prefect automation create --from-file`: that
command creates a second copy on every run, cannot fill in a notification block's id, and
cannot check the crash window against the heartbeat. What the automations are and why:
deployments/automations.py."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from api.cli.errors import CliInputError
from api.cli.output import JsonFlag, console, emit_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import Automation

__all__ = ["app"]

app = typer.Typer(
    help="Prefect automations: resume runs whose process died; alert on spent pools and bad keys.",
    no_args_is_help=True,
)


@contextmanager
def _prefect() -> Iterator[SyncPrefectClient]:
    """A client of the Prefect server PREFECT_API_URL names (never an ephemeral one: the
    automations must live where the runs are)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise CliInputError(
            "PREFECT_API_URL is not set: automations live on the Prefect server your runs use "
            "(e.g. http://127.0.0.1:4200/api)"
        )
    try:
        with get_client(sync_client=True) as client:
            yield client
    except httpx.HTTPError as exc:
        raise CliInputError(f"Prefect API at {url}: {exc}") from exc


def _notify_block(client: SyncPrefectClient, slug: str) -> UUID:
    from prefect.exceptions import ObjectNotFound

    block_type, _, name = slug.partition("/")
    if not block_type or not name:
        raise CliInputError(f"--notify {slug!r}: give BLOCK-TYPE/NAME, e.g. slack-webhook/ops")
    try:
        block = client.read_block_document_by_name(name, block_type_slug=block_type)
    except ObjectNotFound:
        raise CliInputError(f"--notify: no {block_type} block named {name!r}") from None
    return block.id


@app.command("apply")
def apply(
    crash_after_s: Annotated[
        int, typer.Option(help="Mark a run Crashed after this long without a heartbeat.")
    ] = 90,
    exhausted_for_minutes: Annotated[
        float, typer.Option(help="Alert when a pool has been spent this long.")
    ] = 15.0,
    notify: Annotated[
        str | None,
        typer.Option(
            metavar="BLOCK-TYPE/NAME",
            help="Alert through this notification block (e.g. slack-webhook/ops); "
            "default: no action, the alert is an event in the Prefect UI.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create keyrelay's automations, or bring them up to date (safe to repeat)."""
    from deployments.automations import AutomationOptions, apply_automations, keyrelay_automations

    with _prefect() as client:
        try:
            options = AutomationOptions(
                crash_after_s=crash_after_s,
                exhausted_for_s=exhausted_for_minutes * 60,
                notify_block_id=_notify_block(client, notify) if notify else None,
            )
        except ValueError as exc:
            raise CliInputError(str(exc)) from None
        applied = apply_automations(client, keyrelay_automations(options))
    if json_output:
        emit_json({"automations": [_applied_json(a) for a in applied]})
        return
    for item in applied:
        console.print(f"{item.outcome:9} {item.name} ({item.id})")
    console.print(
        "runs must send a heartbeat at least every 30 s: `keyrelay serve` does; process workers "
        "need PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 (deployments/prefect.yaml sets it)"
    )


def _applied_json(item: Any) -> dict[str, str]:
    return {"name": item.name, "id": str(item.id), "outcome": item.outcome}


def _automation_json(automation: Automation) -> dict[str, Any]:
    return automation.model_dump(
        mode="json", include={"id", "name", "description", "enabled", "trigger", "actions"}
    )


@app.command("list")
def list_(json_output: JsonFlag = False) -> None:
    """keyrelay's automations on the Prefect server."""
    from deployments.automations import list_automations

    with _prefect() as client:
        found = list_automations(client)
    if json_output:
        emit_json({"automations": [_automation_json(a) for a in found]})
        return
    if not found:
        console.print("no keyrelay automations (create them with `keyrelay automations apply`)")
        return
    table = Table()
    for column in ("name", "enabled", "fires on", "action", "id"):
        table.add_column(column, overflow="fold")
    for automation in found:
        table.add_row(
            automation.name,
            "yes" if automation.enabled else "no",
            _fires_on(automation),
            ", ".join(a.type for a in automation.actions),
            str(automation.id),
        )
    console.print(table)


def _fires_on(automation: Automation) -> str:
    from prefect.events.schemas.automations import EventTrigger, Posture

    trigger = automation.trigger
    if not isinstance(trigger, EventTrigger):
        return trigger.type
    expected = ", ".join(sorted(trigger.expect))
    if trigger.posture == Posture.Proactive:
        after = ", ".join(sorted(trigger.after))
        return f"{after}, then no {expected} within {trigger.within.total_seconds():g} s"
    return expected


@app.command("rm")
def remove(
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="[NAME]...", help="Only these (default: all of keyrelay's)."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Delete keyrelay's automations from the Prefect server."""
    from deployments.automations import AUTOMATION_NAMES, remove_automations

    unknown = sorted(set(names or ()) - set(AUTOMATION_NAMES))
    if unknown:
        raise CliInputError(
            f"not a keyrelay automation: {', '.join(unknown)} (see `keyrelay automations list`)"
        )
    with _prefect() as client:
        removed = remove_automations(client, names or None)
    if json_output:
        emit_json({"removed": [{"name": a.name, "id": str(a.id)} for a in removed]})
        return
    for automation in removed:
        console.print(f"removed {automation.name} ({automation.id})")
    if not removed:
        console.print("nothing to remove")
