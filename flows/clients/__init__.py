"""Your own agent code on keyrelay's key pool: an SDK client on a leased key, the retry condition
for the task that uses it, and the flow's way to give its worker back when every key is spent.

    from flows.clients import defer_until, keyrelay_client, retry_on_refusal
    from keystore import NoKeyAvailable

    @task(retries=6, retry_condition_fn=retry_on_refusal)
    async def ask(messages: list[dict]) -> dict:
        async with keyrelay_client("anthropic", holder="my-agent") as client:
            reply = await client.messages.create(model=MODEL, max_tokens=1024, messages=messages)
        return reply.model_dump(mode="json")

    @flow
    async def my_agent(question: str) -> str:
        while True:
            try:
                reply = await ask([{"role": "user", "content": question}])
                break
            except NoKeyAvailable as exhausted:
                spent = exhausted
            await defer_until(spent)
        ...

docs/examples/own_tool_loop.py is a whole tool loop. Errors: see `flows.clients.errors`.
"""

from flows.clients.errors import CallFailed, KeyRefused, ProviderBusy, RequestRefused
from flows.clients.retries import RetryOnRefusal, retry_on_refusal
from flows.clients.sdk_client import keyrelay_client
from flows.clients.spent_pool import defer_until

__all__ = [
    "CallFailed",
    "KeyRefused",
    "ProviderBusy",
    "RequestRefused",
    "RetryOnRefusal",
    "defer_until",
    "keyrelay_client",
    "retry_on_refusal",
]
