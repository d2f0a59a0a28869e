"""What a run shows in the Prefect UI: every audit row as an event, the pool as a table artifact.

Events are named `keyrelay.<audit type>` (e.g. `keyrelay.key_rate_limited`), about the resource
`keyrelay.key.<id>` (or `keyrelay.pool.<provider>` for pool-wide rows) and related to the flow run,
so the event feed shows them and Automations can trigger on them. Nothing here holds a secret:
audit details and public key views carry masked forms and fingerprints only."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from prefect.artifacts import acreate_table_artifact
from prefect.events import emit_event

from flows.blocking import in_thread
from keystore import AuditEventPublic, Keystore

__all__ = ["emit_audit_event", "pool_table", "publish_pool_artifact"]

log = logging.getLogger(__name__)


def _resource(event: AuditEventPublic) -> dict[str, str]:
    if event.key_id is not None:
        return {
            "prefect.resource.id": f"keyrelay.key.{event.key_id}",
            "prefect.resource.name": f"key {event.key_id}",
        }
    provider = str(event.details.get("provider", "all"))
    return {
        "prefect.resource.id": f"keyrelay.pool.{provider}",
        "prefect.resource.name": f"{provider} pool",
    }


def _related(event: AuditEventPublic) -> list[dict[str, str]]:
    try:
        run = uuid.UUID(str(event.run_id))
    except ValueError:
        return []
    return [{"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.role": "flow-run"}]


def emit_audit_event(event: AuditEventPublic) -> None:
    """Audit hook: runs after the row is committed, in whatever thread wrote it."""
    emit_event(
        event=f"keyrelay.{event.type}",
        resource=_resource(event),
        related=_related(event),
        occurred=event.at,
        payload={"audit_id": event.id, **event.details},
    )


_COLUMNS = (
    "id",
    "name",
    "state",
    "masked",
    "active_leases",
    "max_concurrency",
    "priority",
    "cooling_until",
    "cooling_reason",
    "utilization",
    "uses",
    "rate_limit_hits",
)


def pool_table(store: Keystore, provider: str) -> list[dict[str, Any]]:
    rows = []
    for key in store.list_keys(provider):
        data = key.model_dump(mode="json")
        rows.append({column: data[column] for column in _COLUMNS})
    return rows


async def publish_pool_artifact(store: Keystore, provider: str, *, why: str) -> None:
    """The pool as the run saw it at a rotation or deferral (masked keys only)."""
    try:
        rows = await in_thread(pool_table, store, provider)
        await acreate_table_artifact(
            table=rows, key=f"keyrelay-pool-{provider}", description=f"{provider} keys: {why}"
        )
    except Exception:  # the UI view must never break the run
        log.exception("could not publish the %s pool artifact", provider)
