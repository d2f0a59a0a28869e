"""What the pool page shows, as one JSON document (`GET /ui/state`): the keys (KeyPublic, with
the limit buckets each provider last reported, as `GET /keys/limits` has them), the
per-provider counts, who holds each lease, and the latest audit events.

One document rather than the page calling /keys, /keys/leases and /audit itself: one request per
poll against the page's budget (api/ui/gate.py), and one clock (`now`, the server's) that every
countdown on the page is measured against, whatever the browser's clock says. Its parts are read
one after another, not in one transaction: a lease taken between two reads can show in one part
a poll before the other."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import quote, urlsplit

from pydantic import BaseModel

from keystore import AuditEventPublic, BucketPublic, KeyPublic, Keystore
from keystore.holders import LeaseHolderPublic
from keystore.views import ProviderStatus

__all__ = ["AUDIT_SHOWN", "KeyView", "LeaseHolderView", "PageState", "flow_run_url", "page_state"]

AUDIT_SHOWN = 20
# keyrelay's flows hold keys as `flow-run <flow run id> turn <n>` (flows/steps.py).
_FLOW_RUN_HOLDER = re.compile(
    r"^flow-run ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) turn (\d+)$"
)


class LeaseHolderView(LeaseHolderPublic):
    flow_run_id: str | None
    turn: int | None
    flow_run_url: str | None  # the run's page in the Prefect UI, when PREFECT_UI_URL is set


class KeyView(KeyPublic):
    limits: list[BucketPublic]  # each window the provider reported, until its reset


class PageState(BaseModel):
    now: datetime
    poll_interval_s: float
    providers: dict[str, ProviderStatus]
    keys: list[KeyView]
    leases: list[LeaseHolderView]
    audit: list[AuditEventPublic]


def prefect_ui_base(value: str | None) -> str | None:
    """PREFECT_UI_URL as a link base: http(s) only (anything else would be a script link on the
    page), without a trailing slash."""
    if not value or urlsplit(value).scheme not in ("http", "https"):
        return None
    return value.rstrip("/")


def flow_run_url(flow_run_id: str, prefect_ui_url: str | None) -> str | None:
    if prefect_ui_url is None:
        return None
    return f"{prefect_ui_url}/runs/flow-run/{quote(flow_run_id)}"


def _view(lease: LeaseHolderPublic, prefect_ui_url: str | None) -> LeaseHolderView:
    match = _FLOW_RUN_HOLDER.match(lease.holder or "")
    run_id = match.group(1) if match else None
    return LeaseHolderView(
        **lease.model_dump(),
        flow_run_id=run_id,
        turn=int(match.group(2)) if match else None,
        flow_run_url=flow_run_url(run_id, prefect_ui_url) if run_id else None,
    )


def page_state(ks: Keystore, *, prefect_ui_url: str | None, poll_interval_s: float) -> PageState:
    status = ks.status()
    buckets: dict[int, list[BucketPublic]] = {}
    for bucket in ks.limits():
        buckets.setdefault(bucket.key_id, []).append(bucket)
    return PageState(
        now=ks.now(),
        poll_interval_s=poll_interval_s,
        providers=status.providers,
        keys=[KeyView(**k.model_dump(), limits=buckets.get(k.id, [])) for k in status.keys],
        leases=[_view(lease, prefect_ui_url) for lease in ks.active_leases()],
        audit=ks.audit_events(limit=AUDIT_SHOWN),
    )
