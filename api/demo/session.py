"""One demo session: bring the stack up, launch the runs through Prefect's API, watch them until
they all finish, summarize, and (with `keep`) leave everything running until Ctrl-C.

Runs are started the way any Prefect user starts them, `arun_deployment(..., timeout=0)` against
the deployment the serve process registered; nothing here imports `flows`."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import anyio
from rich.console import Console

from api.demo.observe import Observer, Snapshot, clock
from api.demo.processes import DemoError
from api.demo.progress import make_view
from api.demo.scenario import DemoOptions, run_parameters
from api.demo.stack import DEPLOYMENT, DemoStack, demo_stack
from api.demo.summary import DemoSummary, summarize

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

__all__ = ["run_demo"]

POLL_S = 0.5
DEPLOYMENT_TIMEOUT_S = 90.0


def run_demo(
    options: DemoOptions,
    *,
    console: Console,
    keep: bool = False,
    on_summary: Callable[[DemoSummary], None],
) -> DemoSummary:
    """Run the demo; `on_summary` is called before `keep` starts waiting for Ctrl-C. Raises
    KeyboardInterrupt (Ctrl-C or SIGTERM) and DemoError after everything is stopped."""
    started = time.monotonic()

    def say(line: str) -> None:
        console.print(f"{clock(datetime.now(UTC))}  {line}", highlight=False)

    with _interruptible(), demo_stack(options, keep_files=keep, say=say) as stack:
        with _client_environment(stack):
            snapshot = anyio.run(_launch_and_watch, stack, options, console)
        summary = summarize(
            snapshot=snapshot,
            store=stack.store,
            emulator=stack.emulator,
            wall_time_s=time.monotonic() - started,
            prefect_ui=stack.ui_url,
            kept=keep,
            workdir=str(stack.workdir),
            pids=stack.pids,
            job_dir=stack.job_dir if options.agent == "claude-code" else None,
            job_steps=options.job_steps,
        )
        on_summary(summary)
        if keep:
            say(
                f"Everything is still running: open {stack.ui_url} (flow runs, their states and "
                f"the keyrelay.* events). Files in {stack.workdir}. Ctrl-C stops it all."
            )
            _wait_for_interrupt(stack)
    return summary


async def _launch_and_watch(stack: DemoStack, options: DemoOptions, console: Console) -> Snapshot:
    from prefect.client.orchestration import get_client
    from prefect.deployments import arun_deployment

    observer = Observer(stack.store, stack.emulator, stack.keys, options.steps)
    async with get_client() as client:
        await _wait_for_deployment(client, stack)
        console.print(
            f"{clock(datetime.now(UTC))}  launching {options.runs} runs x {options.steps} turns "
            f"= {options.turns} turns; the keys serve {options.capacity_per_window} per "
            f"{options.window_s:g} s window",
            highlight=False,
        )
        for index in range(1, options.runs + 1):
            name = f"demo-{index}"
            flow_run = await arun_deployment(
                DEPLOYMENT,
                client=client,
                parameters=run_parameters(index, options, job_dir=str(stack.job_dir)),
                flow_run_name=name,
                timeout=0,
                as_subflow=False,
                tags=["keyrelay-demo"],
            )
            observer.watch(flow_run.id, name)
        deadline = time.monotonic() + options.timeout_s
        with make_view(console, title="keyrelay demo") as view:
            while True:
                snapshot = await observer.poll(client)
                view.show(snapshot)
                if snapshot.done:
                    return snapshot
                stack.check_children()
                if time.monotonic() > deadline:
                    waiting = ", ".join(f"{r.name} {r.state}" for r in snapshot.runs if not r.final)
                    raise DemoError(
                        f"runs not finished after {options.timeout_s:.0f} s: {waiting}; "
                        f"the serve process: {stack.children[-1].tail()}"
                    )
                await anyio.sleep(POLL_S)


async def _wait_for_deployment(client: PrefectClient, stack: DemoStack) -> None:
    """The serve process registers the deployment a few seconds after it starts."""
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + DEPLOYMENT_TIMEOUT_S
    while True:
        try:
            await client.read_deployment_by_name(DEPLOYMENT)
            return
        except ObjectNotFound:
            pass
        stack.check_children()
        if time.monotonic() > deadline:
            raise DemoError(f"the serve process did not register {DEPLOYMENT} in time")
        await anyio.sleep(0.3)


def _wait_for_interrupt(stack: DemoStack) -> None:
    while True:
        stack.check_children()
        time.sleep(1.0)


@contextlib.contextmanager
def _client_environment(stack: DemoStack) -> Iterator[None]:
    """This process talks to the demo's server only: its PREFECT_* settings (and PREFECT_HOME,
    which importing Prefect creates) are the demo's for the session, then restored."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("PREFECT_")}
    for name in saved:
        del os.environ[name]
    os.environ["PREFECT_HOME"] = str(Path(stack.env["PREFECT_HOME"]) / "client")
    os.environ["PREFECT_API_URL"] = stack.api_url
    try:
        if "prefect" in sys.modules:  # imported earlier (tests): settings are already loaded
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
                yield
        else:
            yield
    finally:
        for name in [k for k in os.environ if k.startswith("PREFECT_")]:
            del os.environ[name]
        os.environ.update(saved)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the demo, and with it everything it started. SIGINT is set
    explicitly: a shell starts background jobs with it ignored, and Python keeps that."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt),
        }
    except ValueError:  # not the main thread: the caller handles signals
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
