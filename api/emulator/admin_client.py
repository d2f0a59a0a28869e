"""A small typed client of the emulator's `/_admin` endpoints (tests and benchmarks use it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import TypeAdapter

from api.emulator.agent_script import AgentScript
from api.emulator.config import FaultRule, LimitRule, WindowLimit
from api.emulator.keys import fingerprint
from api.emulator.reports import BucketReport, KeyCounters, LogEntry, StateReport

__all__ = ["EmulatorAdmin"]

_KEYS = TypeAdapter(list[KeyCounters])
_BUCKETS = TypeAdapter(list[BucketReport])
_LOG = TypeAdapter(list[LogEntry])


class EmulatorAdmin:
    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._http = httpx.Client(
            base_url=f"{base_url}/_admin", transport=transport, timeout=timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, **params: Any) -> Any:
        response = self._http.get(path, params={k: v for k, v in params.items() if v is not None})
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self._http.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def state(self) -> StateReport:
        return StateReport.model_validate(self._get("/state"))

    def keys(self) -> list[KeyCounters]:
        return _KEYS.validate_python(self._get("/keys"))

    def key(self, *, api_key: str | None = None, key_fingerprint: str | None = None) -> KeyCounters:
        """Counters of one key (all zero if the emulator never saw it). A given `api_key` is
        fingerprinted here: the key itself is never sent."""
        wanted = key_fingerprint or (fingerprint(api_key) if api_key else None)
        if wanted is None:
            raise ValueError("give api_key or key_fingerprint")
        response = self._http.get(f"/keys/{wanted}")
        if response.status_code == 404:
            return KeyCounters(key_fingerprint=wanted, masked="")
        response.raise_for_status()
        return KeyCounters.model_validate(response.json())

    def buckets(self) -> list[BucketReport]:
        return _BUCKETS.validate_python(self._get("/buckets"))

    def bucket(self, bucket_id: str) -> BucketReport:
        """`key:<fingerprint>`, `group:<name>` or `ip`."""
        for report in self.buckets():
            if report.bucket_id == bucket_id:
                return report
        raise LookupError(f"no window owner {bucket_id!r} has served anything yet")

    def log(self, *, limit: int | None = None) -> list[LogEntry]:
        return _LOG.validate_python(self._get("/log", limit=limit))

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/config")
        return result

    def set_limits(
        self, limits: Sequence[LimitRule], *, ip_limit: WindowLimit | None = None
    ) -> None:
        body = {
            "limits": [rule.model_dump(mode="json", exclude_none=True) for rule in limits],
            "ip_limit": ip_limit.model_dump(mode="json") if ip_limit else None,
        }
        self._post("/limits", body)

    def set_faults(self, faults: Sequence[FaultRule]) -> None:
        self._post(
            "/faults", {"faults": [f.model_dump(mode="json", exclude_none=True) for f in faults]}
        )

    def set_agent(self, agent: AgentScript | None) -> None:
        """Play `agent` from the next request on (None: plain text replies only)."""
        body = agent.model_dump(mode="json") if agent is not None else None
        self._post("/agent", {"agent": body})

    def set_reply_delay(self, seconds: float) -> None:
        self._post("/reply-delay", {"seconds": seconds})

    def reset(self, *, restore_config: bool = False) -> None:
        self._post("/reset", {"restore_config": restore_config})
