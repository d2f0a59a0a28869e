"""Helpers for the tests of keyrelay's automations on the session's Prefect test server (whose
trigger and action services run, as they do in an ephemeral server)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import httpx
from prefect.client.orchestration import get_client

from deployments.automations import (
    Applied,
    AutomationOptions,
    apply_automations,
    keyrelay_automations,
    remove_automations,
)

T = TypeVar("T")


@contextmanager
def automations_applied(options: AutomationOptions) -> Iterator[list[Applied]]:
    """keyrelay's automations for the length of a test: the test server is shared by the
    session, and other tests' runs must not be crashed or resumed by them."""
    with get_client(sync_client=True) as client:
        applied = apply_automations(client, keyrelay_automations(options))
    try:
        yield applied
    finally:
        with get_client(sync_client=True) as client:
            remove_automations(client)


def server_events(
    api_url: str, name: str, *, since: datetime, resource_prefix: str | None = None
) -> list[dict[str, Any]]:
    """Events the server stored, oldest first."""
    event_filter: dict[str, Any] = {
        "event": {"name": [name]},
        "occurred": {"since": since.isoformat()},
        "order": "ASC",
    }
    if resource_prefix is not None:
        event_filter["resource"] = {"id_prefix": [resource_prefix]}
    response = httpx.post(
        f"{api_url}/events/filter", json={"filter": event_filter, "limit": 50}, timeout=10
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def related_id(event: dict[str, Any], role: str) -> str | None:
    for related in event["related"]:
        if related["prefect.resource.role"] == role:
            return str(related["prefect.resource.id"])
    return None


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout_s:g} s)")
        time.sleep(0.25)
