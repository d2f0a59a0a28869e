"""Live progress: in a terminal a rich Live view (runs, keys, the event feed); otherwise (piped,
CI, `--json`) one plain timestamped line per event, so logs read top to bottom."""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from api.demo.observe import KeyView, RunView, Snapshot, clock

__all__ = ["LineView", "LiveView", "ProgressView", "make_view"]

FEED_LINES = 10
STATE_STYLE = {
    "Running": "green",
    "AwaitingRateLimit": "yellow",
    "Completed": "bold green",
    "Failed": "bold red",
    "Crashed": "bold red",
    "Cancelled": "red",
}


class LineView:
    """One line per event, for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, snapshot: Snapshot) -> None:
        for line in snapshot.feed:
            self.console.print(f"{clock(datetime.now(UTC))}  {line}", highlight=False)


class LiveView:
    """Tables of runs and keys and the last events, redrawn in place."""

    def __init__(self, console: Console, *, title: str) -> None:
        self.console, self.title = console, title
        self.feed: deque[str] = deque(maxlen=FEED_LINES)
        self.started = time.monotonic()
        self.live = Live(console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.live.__exit__(exc_type, exc, tb)

    def show(self, snapshot: Snapshot) -> None:
        now = clock(datetime.now(UTC))
        self.feed.extend(f"{now}  {line}" for line in snapshot.feed)
        self.live.update(self._render(snapshot))

    def _render(self, snapshot: Snapshot) -> RenderableType:
        elapsed = time.monotonic() - self.started
        done = sum(run.final for run in snapshot.runs)
        heading = Text.assemble(
            (self.title, "bold"), f"  {done}/{len(snapshot.runs)} runs finished, {elapsed:.0f} s"
        )
        feed = Text("\n".join(self.feed) or "(no events yet)", style="dim")
        return Group(heading, runs_table(snapshot.runs), keys_table(snapshot.keys), feed)


ProgressView = LineView | LiveView


def make_view(console: Console, *, title: str) -> ProgressView:
    if console.is_terminal:
        return LiveView(console, title=title)
    return LineView(console)


def _state(run: RunView) -> Text:
    label = run.state
    if run.resume_at is not None:
        wait_s = max(0.0, (run.resume_at - datetime.now(UTC)).total_seconds())
        label += f" until {clock(run.resume_at)} ({wait_s:.0f} s)"
    return Text(label, style=STATE_STYLE.get(run.state, ""))


def runs_table(runs: list[RunView]) -> Table:
    table = Table(title="runs", title_justify="left", expand=False)
    for column in ("run", "state", "turns", "on key", "turns served by", "starts"):
        table.add_column(column, justify="right" if column in ("turns", "starts") else "left")
    for run in runs:
        table.add_row(
            run.name,
            _state(run),
            f"{run.turns_done}/{run.steps}",
            run.on_key or "-",
            " ".join(run.turn_keys) or "-",
            str(run.run_count),
        )
    return table


def keys_table(keys: list[KeyView]) -> Table:
    table = Table(title="keys", title_justify="left", expand=False)
    for column in ("key", "priority", "state", "cooling until", "served", "429s"):
        table.add_column(
            column, justify="right" if column in ("priority", "served", "429s") else "left"
        )
    for key in keys:
        style = {"cooling": "yellow", "busy": "cyan", "available": "green"}.get(key.state, "")
        table.add_row(
            key.name,
            str(key.priority),
            Text(key.state, style=style),
            clock(key.cooling_until) if key.state == "cooling" else "-",
            str(key.served),
            str(key.rate_limited),
        )
    return table
