"""A tool loop of your own on the Anthropic SDK, as a Prefect flow on keyrelay's key pool.

    python docs/examples/own_tool_loop.py "How many people live in Lyon?"   # one run, here
    python docs/examples/own_tool_loop.py --serve     # serves the deployment own-tool-loop/default
    prefect deployment run own-tool-loop/default --param question="How many people live in Lyon?"

The model may call `lookup`, a tool defined and executed here; the loop sends the tool's result
back until the reply's `stop_reason` is no longer `tool_use`. It survives the pool's limits:

- each model call is a task (`ask_model`) that opens its own `keyrelay_client`: a key is leased
  for the call only, and every answer's rate-limit headers go to the keystore;
- a 429 (or a key the provider rejects) raises `KeyRefused` after the keystore has cooled (or
  benched) the key; `retry_on_refusal` retries the task at once and the retry leases another key;
  an overloaded provider is retried after a jittered backoff;
- when every key is spent, the task raises `NoKeyAvailable` and the flow calls `defer_until`: a
  deployed run gives its worker back and waits as Scheduled/AwaitingRateLimit until the reset,
  then starts again from the top. `ask_model` persists its results, and Prefect's default cache
  key (the task's inputs and source, and the flow run) brings every call the run already made
  back from the cache, so no call is paid twice and the loop goes on where it stopped. A run that
  is not deployed waits in-process instead.

Give it keys first (`keyrelay keys add --provider anthropic ...`); `ANTHROPIC_BASE_URL` points the
SDK at a gateway or at `keyrelay emulate`. A resumed run reads its cached calls from Prefect's
result storage: with workers on several machines, configure shared result storage
(`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`), or a run resumed elsewhere makes its calls again.
A tool with side effects belongs in a task with persisted results too, so that it does not run
again when the flow starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any, cast

from anthropic.types import MessageParam, ToolParam
from prefect import flow, serve, task
from prefect.runtime import flow_run

from flows.clients import defer_until, keyrelay_client, retry_on_refusal
from keystore import NoKeyAvailable

MODEL = os.environ.get("OWN_TOOL_LOOP_MODEL", "claude-sonnet-4-5")
SYSTEM = "Answer with the facts the lookup tool gives you; look up each topic you need."
FACTS = {
    "lyon": "Lyon has about 520,000 inhabitants (city proper) and lies where the Rhône and the "
    "Saône meet.",
    "rhône": "The Rhône flows 813 km from the Rhône Glacier to the Mediterranean.",
}
TOOLS: list[ToolParam] = [
    {
        "name": "lookup",
        "description": "Facts about a topic (a city, a river).",
        "input_schema": {
            "type": "object",
            "properties": {"topic": {"type": "string", "description": "what to look up"}},
            "required": ["topic"],
        },
    }
]


def lookup(topic: str) -> str:
    """The tool: runs here, in the flow, never at the provider."""
    return FACTS.get(topic.strip().lower(), f"Nothing is known about {topic!r}.")


def run_tool(name: str, tool_input: dict[str, Any]) -> str:
    if name == "lookup":
        return lookup(str(tool_input.get("topic", "")))
    return f"There is no tool named {name!r}."


def rough_tokens(messages: list[dict[str, Any]]) -> int:
    """The request's size at ~4 characters a token, so the pool leases a key that can hold it."""
    return len(json.dumps(messages)) // 4 + 1


@task(
    name="ask-model",
    retries=8,
    retry_condition_fn=retry_on_refusal,
    persist_result=True,  # a resumed run gets the calls it already made from Prefect's cache
)
async def ask_model(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One model call on a key leased for it; the reply as plain JSON (what the cache keeps)."""
    async with keyrelay_client(
        "anthropic",
        holder=f"own-tool-loop {flow_run.get_id()}",
        input_tokens=rough_tokens(messages),
    ) as client:
        reply = await client.messages.create(
            model=MODEL,
            max_tokens=1024,
            system=SYSTEM,
            tools=TOOLS,
            messages=cast(list[MessageParam], messages),  # plain JSON, as the cache keeps it
        )
    return reply.model_dump(mode="json", exclude_none=True)


async def ask_until_served(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """`ask_model`, waiting for the pool (or giving the worker back) while every key is spent."""
    while True:
        try:
            return await ask_model(messages)
        except NoKeyAvailable as exhausted:
            spent = exhausted
        await defer_until(spent)  # a deployed run does not come back from here: it restarts


@flow(name="own-tool-loop")
async def own_tool_loop(question: str, max_calls: int = 20) -> str:
    """Ask `question`, running the model's `lookup` calls, until it answers without one."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for _ in range(max_calls):
        reply = await ask_until_served(list(messages))
        messages.append({"role": "assistant", "content": reply["content"]})
        if reply["stop_reason"] != "tool_use":
            return "".join(b["text"] for b in reply["content"] if b["type"] == "text")
        results = [
            {
                "type": "tool_result",
                "tool_use_id": call["id"],
                "content": run_tool(call["name"], call["input"]),
            }
            for call in reply["content"]
            if call["type"] == "tool_use"
        ]
        messages.append({"role": "user", "content": results})
    raise RuntimeError(f"no answer without a tool call within {max_calls} model calls")


def main() -> None:
    parser = argparse.ArgumentParser(description="A tool loop of your own on keyrelay's keys.")
    parser.add_argument("question", nargs="?", help="ask it once, in this process")
    parser.add_argument("--serve", action="store_true", help="serve own-tool-loop/default")
    args = parser.parse_args()
    if args.serve:
        # Poll every second and start runs a little early, so a run deferred to a reset is
        # running again within about a second of it (as `keyrelay serve` does).
        deployment = own_tool_loop.to_deployment(name="default")
        assert not asyncio.iscoroutine(deployment)  # outside an event loop: not a coroutine
        serve(
            deployment,
            limit=4,
            query_seconds=1,
            prefetch_seconds=8,
            pause_on_shutdown=False,
        )
    elif args.question:
        print(asyncio.run(own_tool_loop(args.question)))
    else:
        parser.error("give a question, or --serve")


if __name__ == "__main__":
    main()
