"""What an attempt's provider said, handed to the keystore as it arrives.

Every HTTP response of a turn (an SDK's one call, or each of the many requests the `claude` CLI
makes through its relay) goes to `Keystore.record_response`: the keystore learns each bucket's
remaining and reset from successes too, and a refusal cools the key with the reset the provider
named. The recorder remembers the refusal it recorded, because the executor's own reading of it
can know less (the CLI reports an API-key 429 without the `retry-after` the response carried).
"""

from __future__ import annotations

from flows.blocking import in_thread
from flows.executors.base import ProviderResponse
from keystore import Keystore, RateLimitSignal

__all__ = ["ResponseRecorder"]


class ResponseRecorder:
    def __init__(self, store: Keystore, *, key_id: int, provider: str, run_id: str) -> None:
        self._store, self._key_id, self._provider, self._run_id = store, key_id, provider, run_id
        self.refusal: RateLimitSignal | None = None  # the last refusal recorded, if any

    async def __call__(self, response: ProviderResponse) -> None:
        signal = await in_thread(
            self._store.record_response,
            self._key_id,
            provider=self._provider,
            status=response.status,
            headers=response.headers,
            body=response.body,
            received_at=response.received_at,
            run_id=self._run_id,
        )
        if signal is not None:
            self.refusal = signal
