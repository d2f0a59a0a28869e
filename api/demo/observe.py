"""What the demo shows, read about twice a second: each run's Prefect state, its turns and keys
(from its checkpoint in the keystore), each key's state and emulator counters, and the audit rows
written since the last look, as lines for the event feed.

"Which key a run is on" comes from what was recorded: the key of its last finished turn, or the
key it just rotated to. The keystore's facade does not list leases by holder, so a turn in flight
on the key it already had shows that key too (which it almost always is)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from api.emulator import RunningEmulator
from keystore import AuditEventPublic, KeyPublic, Keystore

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = ["FEED_TYPES", "KeyView", "Observer", "RunView", "Snapshot", "clock"]

FEED_TYPES = (
    "key_rate_limited",
    "key_rotated",
    "pool_waiting",
    "pool_resumed",
    "pool_exhausted",
    "fallback_started",
    "fallback_ended",
)
AUDIT_PAGE = 500  # newest first: far more than the demo writes between two looks


def clock(value: datetime | str | None) -> str:
    """A time as HH:MM:SS on this machine's clock."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone().strftime("%H:%M:%S")


@dataclass(frozen=True)
class RunView:
    id: UUID
    name: str
    state: str  # Prefect's state name: Scheduled, Pending, Running, AwaitingRateLimit, ...
    final: bool
    completed: bool
    resume_at: datetime | None  # while AwaitingRateLimit
    turns_done: int
    steps: int
    turn_keys: tuple[str, ...]  # the key that served each finished turn
    on_key: str | None
    run_count: int


@dataclass(frozen=True)
class KeyView:
    id: int
    name: str
    priority: int
    state: str  # available | busy | cooling | ...
    cooling_until: datetime | None
    served: int  # emulator: answered 200
    rate_limited: int  # emulator: 429s, wasted calls


@dataclass(frozen=True)
class Snapshot:
    runs: list[RunView]
    keys: list[KeyView]
    feed: list[str]  # new lines since the previous snapshot

    @property
    def done(self) -> bool:
        return all(run.final for run in self.runs)


class Observer:
    def __init__(
        self, store: Keystore, emulator: RunningEmulator, keys: list[KeyPublic], steps: int
    ) -> None:
        self.store, self.emulator, self.steps = store, emulator, steps
        self.key_names = {key.id: key.name for key in keys}
        self.run_names: dict[str, str] = {}  # flow-run id -> name
        self._last_event_id = 0
        self._states: dict[str, str] = {}
        self._rotated_to: dict[str, tuple[int, str]] = {}  # run id -> (turn, key rotated to)

    def watch(self, run_id: UUID, name: str) -> None:
        self.run_names[str(run_id)] = name

    async def poll(self, client: PrefectClient) -> Snapshot:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = [UUID(run_id) for run_id in self.run_names]
        flow_runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
        feed = [self._describe(event) for event in self._new_events()]
        runs = sorted((self._run_view(run) for run in flow_runs), key=lambda r: _order(r.name))
        for run in runs:
            if self._states.get(str(run.id)) != run.state:
                self._states[str(run.id)] = run.state
                feed.append(self._state_line(run))
        return Snapshot(runs=runs, keys=self._key_views(), feed=[line for line in feed if line])

    def _new_events(self) -> list[AuditEventPublic]:
        events = [
            event
            for event in self.store.audit_events(limit=AUDIT_PAGE)
            if event.id > self._last_event_id
        ]
        events.sort(key=lambda event: event.id)
        if events:
            self._last_event_id = events[-1].id
        return [event for event in events if event.type in FEED_TYPES]

    def _key(self, key_id: Any) -> str:
        return self.key_names.get(key_id, f"key {key_id}") if key_id is not None else "?"

    def _describe(self, event: AuditEventPublic) -> str:
        run = self.run_names.get(event.run_id or "", "a run")
        details = event.details
        if event.type == "key_rate_limited":
            until = clock(details.get("cooling_until"))
            return f"{run}: 429 on {self._key(event.key_id)}, which cools until {until}"
        if event.type == "key_rotated":
            to = self._key(event.key_id)
            self._rotated_to[event.run_id or ""] = (int(details.get("turn") or 0), to)
            frm = self._key(details.get("from_key"))
            return f"{run}: turn {details.get('turn')} rotated {frm} -> {to}"
        if event.type == "pool_waiting":
            until = clock(details.get("until"))
            return f"{run}: every key spent: AwaitingRateLimit until {until}, worker freed"
        if event.type == "pool_resumed":
            lateness_s = float(details.get("lateness_s", 0))
            done = details.get("turns_done")
            return f"{run}: resumed {lateness_s:+.2f} s after its reset, {done} turn(s) kept"
        if event.type == "pool_exhausted":
            return f"{run}: gave up: {details.get('message', '')}"
        return f"{run}: {event.type.replace('_', ' ')} ({details.get('fallback_provider')})"

    def _state_line(self, run: RunView) -> str:
        if run.completed:
            return f"{run.name}: Completed (turns on {', '.join(run.turn_keys)})"
        if run.final:
            return f"{run.name}: {run.state}"
        if run.state == "Running" and run.run_count <= 1:  # a resumption has its own line
            return f"{run.name}: Running"
        return ""

    def _run_view(self, flow_run: FlowRun) -> RunView:
        run_id = str(flow_run.id)
        checkpoint = self.store.load_checkpoint(run_id) or {}
        turns = checkpoint.get("turns") or []
        turn_keys = tuple(str(t.get("key_name", "?")) for t in turns if isinstance(t, dict))
        state = flow_run.state
        waiting = flow_run.state_name == "AwaitingRateLimit"
        rotated_turn, rotated_to = self._rotated_to.get(run_id, (0, None))
        on_key = rotated_to if rotated_turn > len(turn_keys) else None
        on_key = on_key or (turn_keys[-1] if turn_keys else None)
        return RunView(
            id=flow_run.id,
            name=self.run_names.get(run_id, flow_run.name),
            state=flow_run.state_name or "?",
            final=bool(state and state.is_final()),
            completed=bool(state and state.is_completed()),
            resume_at=flow_run.next_scheduled_start_time if waiting else None,
            turns_done=len(turn_keys),
            steps=self.steps,
            turn_keys=turn_keys,
            on_key=on_key if flow_run.state_name == "Running" else None,
            run_count=flow_run.run_count,
        )

    def _key_views(self) -> list[KeyView]:
        emulated = self.emulator.admin.keys()  # per-key counters (the admin's method)
        counters = {c.key_fingerprint: c for c in emulated}
        views = []
        for key in self.store.list_keys():
            seen = counters.get(key.fingerprint)
            views.append(
                KeyView(
                    id=key.id,
                    name=key.name,
                    priority=key.priority,
                    state=key.state,
                    cooling_until=key.cooling_until,
                    served=seen.served if seen else 0,
                    rate_limited=seen.rate_limited if seen else 0,
                )
            )
        return views


def _order(name: str) -> tuple[int, str]:
    number = name.rsplit("-", 1)[-1]
    return (int(number), name) if number.isdigit() else (0, name)
