"""A per-turn relay on 127.0.0.1 that holds the leased key, so the `claude` CLI never sees it.

    async with Relay(secret=lease.secret(), upstream=base_url, report=report, gate=gate) as relay:
        env.update(relay.child_env())   # ANTHROPIC_BASE_URL=http://127.0.0.1:PORT, a placeholder
        ... run the CLI ...
    relay.stats                          # forwarded, provider 429s, local refusals, bytes
    relay.last_refusal                   # the gate's signal when the relay refused locally

The CLI gets a placeholder credential of the key's kind, random per turn and worthless anywhere
else (`sk-ant-api03-keyrelay-...` as ANTHROPIC_API_KEY, `sk-ant-oat01-keyrelay-...` as
CLAUDE_CODE_OAUTH_TOKEN). The relay accepts only requests that carry it (compared in constant
time) and are addressed to its own address; it swaps in the real credential, forwards method,
path, query and body to `upstream`, and streams the answer back chunk by chunk as it arrives
(status and headers unchanged but hop-by-hop ones, bodies as sent, compressed or not).

- `report(ProviderResponse)` hears every upstream answer as soon as its head arrives (an error's
  small body first, which then goes to the CLI too). It runs beside the stream; the relay waits
  for it (at most `report_wait_s`) before asking the gate about the next request and before the
  context exits, so the keystore has heard every answer when the turn ends. A failing or slow
  report is logged and otherwise ignored.
- `gate()` is asked before each request is forwarded. A `RateLimitSignal` means the key cannot
  serve now: the relay answers the CLI with a 429 of its own (`retry-after` to the signal's reset;
  for a subscription token the unified `rejected` headers too) and spends no provider call. A
  failing or slow gate (over `gate_timeout_s`) lets the request through: the provider decides.
- A provider that cannot be reached is a 502 (504 on a timeout) in Anthropic's error shape.

Why an asyncio server speaking HTTP/1.1 through h11 (relay_connection.py) and not uvicorn: one
relay starts and stops per turn, and `uvicorn.Server.serve` polls its exit flag every 100 ms and,
on the main thread, replaces the process's SIGINT/SIGTERM handlers for as long as it runs (in a
Prefect worker, for every turn). h11 is the parser uvicorn itself uses, already installed with
httpx, and parsing the request ourselves lets the relay refuse an absolute-form (proxy) target
before anything else sees it, and pass `Content-Length` / `Content-Encoding` straight through.

The secret lives in this object only while the context is open; it is in no repr, log line,
exception or stat. After the context exits, the placeholder is dead and the port closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import httpx

from flows.executors.base import Gate, Report
from flows.executors.redact import Redactor
from flows.executors.relay_answers import local_limit, refusal
from flows.executors.relay_connection import IncomingRequest, ResponseChannel, serve_connection
from flows.executors.relay_reports import ReportQueue
from flows.executors.relay_upstream import Upstream
from flows.executors.subprocess_env import credential_var
from keystore.clock import Clock, utcnow
from keystore.errors import InvalidInput
from keystore.ratelimits import RateLimitSignal

__all__ = ["Gate", "KeyKind", "Relay", "RelayStats"]

log = logging.getLogger(__name__)

KeyKind = Literal["api_key", "oauth"]
HOST = "127.0.0.1"
LOOPBACK_NAMES = "127.0.0.1,localhost"
# Anthropic refuses Messages requests over 32 MB; the relay will not hold more in memory.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
_PLACEHOLDER_PREFIX: dict[KeyKind, str] = {
    "api_key": "sk-ant-api03-keyrelay-",
    "oauth": "sk-ant-oat01-keyrelay-",
}


def key_kind(secret: str) -> KeyKind:
    """The kind the CLI would take `secret` for (the same rule as `credential_var`)."""
    return "oauth" if credential_var(secret) == "CLAUDE_CODE_OAUTH_TOKEN" else "api_key"


@dataclass
class RelayStats:
    """What one relay did. Counts only; nothing in here names the key."""

    requests: int = 0  # requests the relay received
    forwarded: int = 0  # sent to the provider (including those that then failed to connect)
    statuses: dict[int, int] = field(default_factory=dict)  # provider status -> count
    provider_429s: int = 0  # of those, 429s the provider answered
    local_refusals: int = 0  # 429s the relay answered itself because the gate said so
    refused: int = 0  # 401/403/413/400: no placeholder, another Host, a proxy-style target, ...
    upstream_failures: int = 0  # 502/504: the provider could not be reached, or broke off
    bytes_to_upstream: int = 0  # request bodies forwarded
    bytes_from_upstream: int = 0  # response bodies relayed back, as they came (compressed or not)
    last_local_refusal: RateLimitSignal | None = None  # the gate's last signal, if it refused


class Relay:
    def __init__(
        self,
        *,
        secret: str,
        upstream: str,
        kind: KeyKind | None = None,
        report: Report | None = None,
        gate: Gate | None = None,
        clock: Clock = utcnow,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
        report_wait_s: float = 5.0,
        gate_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(secret, str) or not secret.strip():
            raise InvalidInput("secret: must be a non-empty string")
        if kind is not None and kind not in _PLACEHOLDER_PREFIX:
            raise InvalidInput(f"kind: must be one of {', '.join(_PLACEHOLDER_PREFIX)}")
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("read_timeout_s", read_timeout_s),
            ("report_wait_s", report_wait_s),
            ("gate_timeout_s", gate_timeout_s),
        ):
            if value <= 0:
                raise InvalidInput(f"{name}: must be greater than 0")
        self.kind: KeyKind = kind or key_kind(secret)
        self._secret = secret
        self._redactor = Redactor(secret)
        self._upstream = Upstream(
            upstream,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
            describe=self._excerpt,
        )
        self._reports = ReportQueue(report, wait_s=report_wait_s, describe=self._excerpt)
        self._gate = gate
        self._clock = clock
        self._gate_timeout_s = gate_timeout_s
        self.stats = RelayStats()
        self.port: int | None = None
        self._placeholder: bytes | None = None
        self._host: bytes = b""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Relay(port={self.port})"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the relay is not running")
        return f"http://{HOST}:{self.port}"

    @property
    def placeholder(self) -> str:
        """The credential the CLI gets instead of the key (worthless anywhere but here)."""
        if self._placeholder is None:
            raise RuntimeError("the relay is not running")
        return self._placeholder.decode()

    @property
    def last_refusal(self) -> RateLimitSignal | None:
        """The gate's signal for the last request the relay refused itself (None: none was)."""
        return self.stats.last_local_refusal

    def child_env(self) -> dict[str, str]:
        """What the CLI needs to talk to this relay: the base URL, the placeholder in the
        variable the CLI reads a credential of this kind from, and NO_PROXY for the loopback
        address: the CLI sends even a `http://127.0.0.1` base URL through HTTP_PROXY when one
        is set (CLAUDE_CLI_NOTES.md, "Through a relay"), and the worker's proxy variables are
        passed on to it. The relay itself reaches the provider through the worker's proxy."""
        placeholder = self.placeholder
        return {
            "ANTHROPIC_BASE_URL": self.base_url,
            credential_var(placeholder): placeholder,
            "NO_PROXY": LOOPBACK_NAMES,
            "no_proxy": LOOPBACK_NAMES,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Relay:
        if self._server is not None or not self._secret:
            raise RuntimeError("a relay runs once: make a new one for the next turn")
        # Bound before serving, so the port is ours alone. IPPROTO_TCP explicitly: asyncio sets
        # TCP_NODELAY on accepted sockets only when the listening socket names its protocol.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.bind((HOST, 0))
            await self._upstream.open()
            self._server = await asyncio.start_server(self._on_connection, sock=sock)
        except BaseException:
            sock.close()
            await self._upstream.close()
            raise
        self.port = sock.getsockname()[1]
        self._host = f"{HOST}:{self.port}".encode()
        self._placeholder = (_PLACEHOLDER_PREFIX[self.kind] + secrets.token_urlsafe(40)).encode()
        log.debug("relay listening on %s:%s for a %s key", HOST, self.port, self.kind)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # What must hold even if this exit is cancelled half-way comes first: no new requests,
        # the placeholder dead, the secret dropped.
        self._placeholder = None
        self._secret = ""
        if self._server is not None:
            self._server.close()
        for task in self._connections:
            task.cancel()
        try:
            if self._connections:
                await asyncio.wait(set(self._connections))
            if self._server is not None:
                await self._server.wait_closed()
            await self._upstream.close()
            await self._reports.settle()
        finally:
            self._reports.cancel()
            self._redactor = Redactor("")  # nothing to hide any more: drop the secret

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(
            serve_connection(
                reader, writer, self._handle, refuse=refusal, max_body_bytes=MAX_REQUEST_BYTES
            )
        )
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    # -- one request -----------------------------------------------------------------------------

    async def _handle(self, request: IncomingRequest, response: ResponseChannel) -> None:
        self.stats.requests += 1
        problem = self._refusal_of(request)
        if problem is not None:
            self.stats.refused += 1
            log.warning("relay :%s refused a request: %s", self.port, problem[1])
            # No second try on this connection: a client that got this is not the turn's CLI.
            await response.whole(refusal(*problem), close=True)
            return
        signal = await self._ask_gate()
        if signal is not None:
            self.stats.local_refusals += 1
            self.stats.last_local_refusal = signal
            log.info("relay :%s refused locally: the key cannot serve (%s)", self.port, signal.kind)
            answer = local_limit(signal, oauth=self.kind == "oauth", now=self._clock())
            await response.whole(answer)
            return
        self.stats.forwarded += 1
        self.stats.bytes_to_upstream += len(request.body)
        await self._upstream.forward(
            request,
            response,
            credential=self._credential_header(),
            stats=self.stats,
            on_head=self._reports.submit,
            clock=self._clock,
        )

    def _refusal_of(self, request: IncomingRequest) -> tuple[int, str] | None:
        """(status, why) when the request must not be forwarded; None when it may be."""
        if not request.target.startswith(b"/"):
            return 403, "only origin-form requests to the relay itself are served (not a proxy)"
        hosts = [value for name, value in request.headers if name == b"host"]
        if not hosts or any(value.lower() != self._host for value in hosts):
            return 403, "the Host header must name the relay's own address (not a proxy)"
        if self._placeholder is None or not self._carries_placeholder(request):
            header = "x-api-key" if self.kind == "api_key" else "Authorization: Bearer"
            return 401, f"missing or wrong credential in {header}"
        return None

    def _carries_placeholder(self, request: IncomingRequest) -> bool:
        assert self._placeholder is not None
        if self.kind == "api_key":
            offered = request.header(b"x-api-key") or b""
        else:
            scheme, _, token = (request.header(b"authorization") or b"").partition(b" ")
            offered = token.strip() if scheme.lower() == b"bearer" else b""
        return hmac.compare_digest(offered, self._placeholder)

    def _credential_header(self) -> tuple[bytes, bytes]:
        if self.kind == "api_key":
            return b"x-api-key", self._secret.encode()
        return b"authorization", b"Bearer " + self._secret.encode()

    # -- gate and report -------------------------------------------------------------------------

    async def _ask_gate(self) -> RateLimitSignal | None:
        if self._gate is None:
            return None
        await self._reports.settle()  # the gate must know what the last answers said
        try:
            return await asyncio.wait_for(self._gate(), self._gate_timeout_s)
        except Exception as exc:  # TimeoutError included: the provider will decide
            log.warning(
                "relay :%s: the gate failed, forwarding anyway (%s: %s)",
                self.port,
                type(exc).__name__,
                self._excerpt(str(exc)),
            )
            return None

    def _excerpt(self, text: str) -> str:
        return self._redactor.excerpt(text, limit=200)
