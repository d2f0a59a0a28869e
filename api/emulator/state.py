"""The emulator's memory: config in force, windows, per-key counters and the request log.

Every request goes through `admit` (authenticate -> scripted fault -> IP-wide window -> the key's
or group's window) and ends with `record`. Both take a lock: handlers run on one event loop, but
tests may drive the state from other threads, and a decision must not interleave with a commit.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

from api.emulator.agent_script import AgentScript
from api.emulator.clock import Clock
from api.emulator.config import EmulatorConfig, FaultRule, LimitRule, WindowLimit
from api.emulator.faults import FaultSchedule
from api.emulator.keys import Credential
from api.emulator.reports import BucketReport, KeyCounters, LogEntry, StateReport, WindowReport
from api.emulator.windows import DIMENSIONS, Bucket, Decision, Usage

__all__ = ["EmulatorState", "Verdict"]

VerdictKind = Literal["unauthorized", "fault", "ip_limited", "limited", "too_large", "admitted"]


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    fault: FaultRule | None = None
    decision: Decision | None = None  # of the key's/group's window (None: no limit applies)
    rule: LimitRule | None = None


class EmulatorState:
    def __init__(self, *, config: EmulatorConfig, clock: Clock) -> None:
        self.clock = clock
        self._initial = config.model_copy(deep=True)
        self._lock = threading.RLock()
        self._request_ids = 0
        self._configure(config)
        self.reset()

    def _configure(self, config: EmulatorConfig) -> None:
        self.config = config.model_copy(deep=True)
        self._faults = FaultSchedule(self.config.faults)

    # -- admin ---------------------------------------------------------------------------------

    def set_limits(self, *, limits: list[LimitRule], ip_limit: WindowLimit | None) -> None:
        """Replace the limits. Windows keep what they served; new caps apply from now on."""
        with self._lock:
            self.config.limits, self.config.ip_limit = list(limits), ip_limit

    def set_reply_delay(self, seconds: float) -> None:
        with self._lock:
            self.config.reply_delay_s = seconds

    def set_faults(self, faults: list[FaultRule]) -> None:
        with self._lock:
            self.config.faults = list(faults)
            self._faults = FaultSchedule(self.config.faults)

    def set_agent(self, agent: AgentScript | None) -> None:
        """Play this script from the next request on (None: plain text replies only)."""
        with self._lock:
            self.config.agent = agent

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget counters, windows and the log (and, if asked, runtime config changes)."""
        with self._lock:
            if restore_config:
                self._configure(self._initial)
            else:
                self._faults = FaultSchedule(self.config.faults)
            self._buckets: dict[str, Bucket] = {}
            self._counters: dict[str, KeyCounters] = {}
            self._log: deque[LogEntry] = deque(maxlen=self.config.log_capacity)

    # -- requests ------------------------------------------------------------------------------

    def next_request_id(self) -> str:
        with self._lock:
            self._request_ids += 1
            return f"req_emu_{self._request_ids:012d}"

    def accepts(self, credential: Credential) -> bool:
        accepted = self.config.accepted_keys
        return accepted is None or any(
            m.matches(secret=credential.secret, key_fingerprint=credential.fingerprint)
            for m in accepted
        )

    def limit_rule(self, credential: Credential) -> LimitRule | None:
        """The most specific matching rule (exact > longest prefix > catch-all; then first)."""
        best: LimitRule | None = None
        for rule in self.config.limits:
            matches = rule.matches(secret=credential.secret, key_fingerprint=credential.fingerprint)
            if matches and (best is None or rule.specificity > best.specificity):
                best = rule
        return best

    def _bucket(self, bucket_id: str, scope: str, limit: WindowLimit) -> Bucket:
        bucket = self._buckets.get(bucket_id)
        if bucket is None:
            bucket = self._buckets[bucket_id] = Bucket(
                bucket_id=bucket_id, scope=scope, limit=limit
            )
        bucket.limit = limit
        return bucket

    def admit(self, *, provider: str, credential: Credential, usage: Usage) -> Verdict:
        with self._lock:
            now = self.clock()
            if not self.accepts(credential):
                return Verdict("unauthorized")
            fault = self._faults.next_fault(credential=credential, provider=provider)
            if fault is not None:
                return Verdict("fault", fault=fault)
            # Decide on every window before committing to any, so a refusal consumes nothing.
            ip_bucket = None
            if self.config.ip_limit is not None:
                ip_bucket = self._bucket("ip", "ip", self.config.ip_limit)
                ip_decision = ip_bucket.decide(now=now, usage=usage)
                if not ip_decision.admitted:
                    return Verdict("ip_limited", decision=ip_decision)
            rule = self.limit_rule(credential)
            bucket = None
            if rule is not None:
                if rule.group is not None:
                    bucket = self._bucket(f"group:{rule.group}", "group", rule)
                else:
                    bucket = self._bucket(f"key:{credential.fingerprint}", "key", rule)
                decision = bucket.decide(now=now, usage=usage)
                if not decision.admitted:
                    kind: VerdictKind = "too_large" if decision.too_large else "limited"
                    return Verdict(kind, decision=decision, rule=rule)
            if ip_bucket is not None:
                ip_bucket.commit(now=now, usage=usage, key_fingerprint=credential.fingerprint)
            committed = None
            if bucket is not None:
                committed = bucket.commit(
                    now=now, usage=usage, key_fingerprint=credential.fingerprint
                )
            return Verdict("admitted", decision=committed, rule=rule)

    def record(
        self, entry: LogEntry, *, credential: Credential | None, served: Usage | None
    ) -> None:
        """Log a finished request and count it for its key (`served`: what it consumed)."""
        with self._lock:
            self._log.append(entry)
            if credential is None:
                return
            counters = self._counters.get(credential.fingerprint)
            if counters is None:
                counters = KeyCounters(
                    key_fingerprint=credential.fingerprint, masked=credential.masked
                )
                self._counters[credential.fingerprint] = counters
            counters.requests += 1
            status = str(entry.status)
            counters.statuses[status] = counters.statuses.get(status, 0) + 1
            if entry.fault is not None:
                counters.faults[entry.fault] = counters.faults.get(entry.fault, 0) + 1
            if entry.status == 429:
                counters.rate_limited += 1
                counters.rate_limited_at.append(entry.at)
            if served is not None:
                counters.served += 1
                counters.input_tokens += served.input_tokens
                counters.output_tokens += served.output_tokens
            counters.first_at = entry.at if counters.first_at is None else counters.first_at
            counters.last_at = entry.at

    # -- reports -------------------------------------------------------------------------------

    def key_counters(self) -> list[KeyCounters]:
        with self._lock:
            return [c.model_copy(deep=True) for c in self._counters.values()]

    def log_entries(self, *, limit: int | None = None) -> list[LogEntry]:
        with self._lock:
            entries = list(self._log)
        return entries[-limit:] if limit else entries

    def bucket_reports(self) -> list[BucketReport]:
        with self._lock:
            return [_bucket_report(bucket) for bucket in self._buckets.values()]

    def report(self) -> StateReport:
        with self._lock:
            return StateReport(
                now=self.clock(), keys=self.key_counters(), buckets=self.bucket_reports()
            )


def _bucket_report(bucket: Bucket) -> BucketReport:
    windows = [
        WindowReport(
            start=start,
            end=end,
            requests=len(served),
            input_tokens=sum(s.usage.input_tokens for s in served),
            output_tokens=sum(s.usage.output_tokens for s in served),
            tokens=sum(s.usage.tokens for s in served),
            keys=sorted({s.key_fingerprint for s in served}),
        )
        for start, end, served in bucket.served_windows()
    ]
    return BucketReport(
        bucket_id=bucket.bucket_id,
        scope=bucket.scope,
        window=bucket.limit.window,
        window_s=bucket.limit.window_s,
        limits={d: getattr(bucket.limit, d) for d in DIMENSIONS},
        windows=windows,
        max_requests_in_window=max((w.requests for w in windows), default=0),
        max_tokens_in_window=max((w.tokens for w in windows), default=0),
        served_over_limit=bucket.served_over_limit(),
    )
