"""What a system is: set up before the start signal (the constructor, then `open` in the run's
event loop, including one warm-up call, so imports and first connections are not timed), then
run one job (`run_job`: its turns, one after the other), for every job at once.

`HttpSystem` is the shape of the systems that make the HTTP call themselves (oracle, naive
rotation, keyrelay's pool API): they differ only in `attempt`, which picks a key, sends one call
and says what it learned."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from bench.goodput.conversation import Dialogue, Message, job_prompt
from bench.goodput.provider import Answer, new_client, send_message
from bench.goodput.trace import Trace
from bench.goodput.workloads import Workload

__all__ = ["HttpSystem", "RunSpec", "System", "UnexpectedAnswer"]


@dataclass(frozen=True)
class RunSpec:
    system: str
    workload: Workload
    base_url: str
    keystore_url: str | None = None  # keyrelay: an empty keystore with the workload's keys
    master_key: str | None = None
    prefect_api_url: str | None = None  # keyrelay-flows


class UnexpectedAnswer(RuntimeError):
    def __init__(self, answer: Answer) -> None:
        super().__init__(f"HTTP {answer.status}: {answer.body[:200]!r}")


class System:
    label: str = ""  # how tables name it

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.workload = spec.workload

    async def open(self) -> None:
        """Set-up inside the run's event loop, before the start signal: clients, one warm-up."""

    async def run_job(self, job: int, trace: Trace) -> None:
        """All of job `job`'s turns, in order; raise if the job cannot finish."""
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def annotate(self, trace: Trace) -> None:
        """Add what only the system knows to its trace, after the run."""


class HttpSystem(System):
    http: httpx.AsyncClient

    async def open(self) -> None:
        self.http = new_client(self.spec.base_url)
        warm_up = [{"role": "user", "content": job_prompt(0)}]
        answer = await send_message(self.http, secret=self.workload.keys[0], messages=warm_up)
        if answer.status != 200:
            raise UnexpectedAnswer(answer)

    async def close(self) -> None:
        await self.http.aclose()

    async def run_job(self, job: int, trace: Trace) -> None:
        dialogue = Dialogue(job, self.workload.turns)
        while not dialogue.done:
            cost = self.workload.cost(job, dialogue.turn)
            answer = await self.attempt(job, dialogue.messages(), cost, trace)
            if answer.status == 200:
                dialogue.answered(answer.reply_text())
            elif answer.status != 429:
                raise UnexpectedAnswer(answer)

    async def attempt(self, job: int, messages: list[Message], cost: int, trace: Trace) -> Answer:
        """Send the call once, on a key of the system's choosing; a 429 is returned, not raised."""
        raise NotImplementedError

    async def send(self, secret: str, messages: list[Message]) -> Answer:
        return await send_message(self.http, secret=secret, messages=messages)
