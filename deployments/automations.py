"""keyrelay's Prefect automations, created (or brought up to date) in one idempotent call.

    keyrelay automations apply [--crash-after-s 90] [--exhausted-for-minutes 15] [--notify BLOCK]

Crash recovery (flows/recovery.py tells the whole story):
- `keyrelay: crash silent runs`: a run of the `agent-run` flow of a deployment that sent a
  heartbeat, then neither another heartbeat nor a final state nor a deferral within
  `crash_after_s`, is set Crashed with CRASH_MESSAGE (Prefect's zombie-flow pattern).
- `keyrelay: resume crashed runs`: such a Crashed run, or one whose process was killed by a
  signal (`_KILLED`: any other crash is left alone), is set Scheduled/AwaitingCrashRecovery, due
  now; a serve process or worker picks it up and it resumes from its checkpoint.

Alerts (keyrelay's audit rows are Prefect events: flows/observability.py):
- `keyrelay: pool exhausted`: a provider's pool turned a run away (`keyrelay.pool_waiting`) and no
  waiting run resumed (`keyrelay.pool_resumed`) within `exhausted_for_s`.
- `keyrelay: key unusable`: a key was taken out of the pool (`keyrelay.key_unusable`: rejected by
  its provider, or it does not decrypt).
Their action is a notification block given with `--notify` (Slack, Teams, email through
SendGrid, any webhook: docs/scale-out.md), else `do-nothing`: the automation still fires, and
its `prefect.automation.action.triggered` event is in the Prefect UI's event feed.

Kept free of `flows` imports (the CLI imports this module and never the flows); the names it
shares with the flows are checked equal by tests/flows/test_automations.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ActionTypes, ChangeFlowRunState, DoNothing, SendNotification
from prefect.events.schemas.automations import Automation, AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

__all__ = [
    "AUTOMATION_NAMES",
    "CRASH_AFTER_S",
    "EXHAUSTED_FOR_S",
    "Applied",
    "AutomationOptions",
    "apply_automations",
    "keyrelay_automations",
    "list_automations",
    "remove_automations",
]

FLOW_NAME = "agent-run"
AWAITING_RATE_LIMIT = "AwaitingRateLimit"  # flows/deferral.py
AWAITING_CRASH_RECOVERY = "AwaitingCrashRecovery"  # flows/recovery.py
HEARTBEAT_FREQUENCY_S = 30  # flows/recovery.py: what `keyrelay serve` and prefect.yaml set
TAG = "keyrelay"
CRASH_AFTER_S = 90  # three heartbeats: two may be late or lost before a live run is crashed
EXHAUSTED_FOR_S = 15 * 60.0
CRASH_MESSAGE_PREFIX = "keyrelay: no heartbeat"

CRASH_SILENT = "keyrelay: crash silent runs"
RESUME_CRASHED = "keyrelay: resume crashed runs"
POOL_EXHAUSTED = "keyrelay: pool exhausted"
KEY_UNUSABLE = "keyrelay: key unusable"
AUTOMATION_NAMES = (CRASH_SILENT, RESUME_CRASHED, POOL_EXHAUSTED, KEY_UNUSABLE)

# A run's own events (heartbeats from its process, states from the server) relate it to its flow
# and, for a deployment's run, to the deployment: only those runs can be scheduled again.
_KEYRELAY_RUNS = [
    ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME}),
    ResourceSpecification({"prefect.resource.role": "deployment"}),
]
# What ends a run's silence without a crash: its next heartbeat, a final state, or giving its
# process back on purpose (a deferral). Running/Pending are not here: they come before the
# first heartbeat of an execution, never after its last.
_ALIVE_OR_DONE = {
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
    f"prefect.flow-run.{AWAITING_RATE_LIMIT}",
}
# The Crashed states of a run whose process was killed: found silent by the automation above; or
# the run's own engine stopped by a signal (its serve process was killed: the orphaned run gets
# as far as the next turn, then exits); or SIGKILLed while its serve / process worker lived (the
# OOM killer). Not any other crash: a process that fails before the flow starts (an import
# error) would be crashed and resumed forever, since only a started flow counts its crashes.
_KILLED = [
    f"{CRASH_MESSAGE_PREFIX}*",
    "Execution was aborted by*",
    "Process exited with status code: -9*",
    "Flow run infrastructure exited with non-zero status code -9*",
]
_ALERT_BODY = (
    "{{ automation.name }}: {{ event.event }} on {{ event.resource.id }} at "
    "{{ event.occurred }}\n{{ automation.description }}\n"
    "{% for k, v in event.payload.items() %}{{ k }}: {{ v }}\n{% endfor %}"
)


@dataclass(frozen=True)
class AutomationOptions:
    crash_after_s: int = CRASH_AFTER_S
    exhausted_for_s: float = EXHAUSTED_FOR_S
    notify_block_id: UUID | None = None  # a notification block document; None: do-nothing

    def __post_init__(self) -> None:
        if self.crash_after_s < 2 * HEARTBEAT_FREQUENCY_S:
            raise ValueError(
                f"crash_after_s must be at least {2 * HEARTBEAT_FREQUENCY_S} (two heartbeats of "
                f"{HEARTBEAT_FREQUENCY_S} s), or a live run could be marked Crashed"
            )
        if self.exhausted_for_s < 10:
            raise ValueError("exhausted_for_s must be at least 10 (Prefect's proactive minimum)")


def crash_message(crash_after_s: int) -> str:
    return (
        f"{CRASH_MESSAGE_PREFIX} for {crash_after_s} s: the process running this run is gone "
        "(keyrelay resumes it from its checkpoint)"
    )


def _alert_actions(options: AutomationOptions, subject: str) -> list[ActionTypes]:
    if options.notify_block_id is None:
        return [DoNothing()]
    return [
        SendNotification(
            block_document_id=options.notify_block_id, subject=subject, body=_ALERT_BODY
        )
    ]


def keyrelay_automations(options: AutomationOptions) -> list[AutomationCore]:
    """The automations as they should be on the server."""
    crash_silent = AutomationCore(
        name=CRASH_SILENT,
        description=(
            f"An agent-run of a deployment sent no heartbeat for {options.crash_after_s} s "
            "while running: its process died. Marks it Crashed, so that "
            f"'{RESUME_CRASHED}' resumes it."
        ),
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=_KEYRELAY_RUNS,
            after={"prefect.flow-run.heartbeat"},
            expect=_ALIVE_OR_DONE,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=options.crash_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=crash_message(options.crash_after_s)
            )
        ],
    )
    resume_crashed = AutomationCore(
        name=RESUME_CRASHED,
        description=(
            f"Schedules an agent-run whose process was killed (found by '{CRASH_SILENT}', or "
            f"stopped by a signal) again at once ({AWAITING_CRASH_RECOVERY}); it resumes from "
            "its checkpoint, and fails after a bounded number of crashes."
        ),
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            match=ResourceSpecification(
                {"prefect.resource.id": "prefect.flow-run.*", "prefect.state-message": _KILLED}
            ),
            match_related=_KEYRELAY_RUNS,
            expect={"prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name=AWAITING_CRASH_RECOVERY,
                message="keyrelay: resuming from its checkpoint after its process died",
            )
        ],
    )
    minutes = f"{options.exhausted_for_s / 60:g}"
    pool_exhausted = AutomationCore(
        name=POOL_EXHAUSTED,
        description=(
            f"Every key of a provider has been spent for {minutes} min: runs are waiting for "
            "a reset and none has resumed since. Add keys, or look at `keyrelay keys status`."
        ),
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "keyrelay.pool.*"}),
            after={"keyrelay.pool_waiting"},
            expect={"keyrelay.pool_resumed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=options.exhausted_for_s),
        ),
        actions=_alert_actions(options, f"keyrelay: a pool has been spent for {minutes} min"),
    )
    key_unusable = AutomationCore(
        name=KEY_UNUSABLE,
        description=(
            "A key was taken out of the pool until someone resets it: its provider rejected "
            "it, or it does not decrypt with this master key. `keyrelay keys explain` says why."
        ),
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "keyrelay.key.*"}),
            expect={"keyrelay.key_unusable"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=_alert_actions(options, "keyrelay: a key is unusable"),
    )
    return [crash_silent, resume_crashed, pool_exhausted, key_unusable]


@dataclass(frozen=True)
class Applied:
    name: str
    id: UUID
    outcome: Literal["created", "updated", "unchanged"]


def _comparable(value: Any) -> Any:
    """An automation's JSON without ids (a trigger gets a fresh one whenever it is built), with
    sets in a stable order."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        items = [_comparable(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


def _same(existing: Automation, wanted: AutomationCore) -> bool:
    fields = set(AutomationCore.model_fields)
    have = existing.model_dump(mode="json", include=fields)
    return _comparable(have) == _comparable(wanted.model_dump(mode="json", include=fields))


def list_automations(client: SyncPrefectClient) -> list[Automation]:
    """keyrelay's automations on the server (tagged `keyrelay`), by name."""
    found = [a for a in client.read_automations() if TAG in a.tags]
    return sorted(found, key=lambda a: (a.name, str(a.id)))


def apply_automations(client: SyncPrefectClient, wanted: Sequence[AutomationCore]) -> list[Applied]:
    """Create what is missing, update what differs (re-enabling a paused one), leave the rest;
    duplicates of one name (two applies racing) are removed."""
    by_name: dict[str, list[Automation]] = {}
    for present in list_automations(client):
        by_name.setdefault(present.name, []).append(present)
    applied = []
    for automation in wanted:
        existing = by_name.get(automation.name, [])
        for duplicate in existing[1:]:
            client.delete_automation(duplicate.id)
        if not existing:
            created = client.create_automation(automation)
            applied.append(Applied(automation.name, created, "created"))
            continue
        first = existing[0]
        if _same(first, automation):
            applied.append(Applied(automation.name, first.id, "unchanged"))
        else:
            client.update_automation(first.id, automation)
            applied.append(Applied(automation.name, first.id, "updated"))
    return applied


def remove_automations(
    client: SyncPrefectClient, names: Sequence[str] | None = None
) -> list[Automation]:
    """Delete keyrelay's automations (only those named, when names are given)."""
    removed = [a for a in list_automations(client) if names is None or a.name in names]
    for automation in removed:
        client.delete_automation(automation.id)
    return removed
