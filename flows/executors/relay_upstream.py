"""The relay's upstream side: forward one request to the provider and stream its answer back.

The request keeps its method, path, query and body (the raw target is appended to the upstream
base URL's path, byte for byte); the answer keeps its status, headers (but hop-by-hop ones) and
body bytes, read raw, so a compressed body passes compressed and a stream passes chunk by chunk.
An error status's body is read first (it is small) so the report can carry it.

Upstream failures become Anthropic-shaped 502/504 answers when nothing was sent to the CLI yet;
once the answer has started, the CLI's connection is aborted instead (relay_connection.py).
httpx exceptions never leave this module: the request they carry holds the real key.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpx

from flows.executors.base import ProviderResponse
from flows.executors.relay_answers import unreachable
from flows.executors.relay_connection import IncomingRequest, ResponseChannel
from flows.executors.relay_headers import downstream_headers, upstream_headers
from keystore.clock import Clock
from keystore.errors import InvalidInput

if TYPE_CHECKING:
    from flows.executors.relay import RelayStats

__all__ = ["Upstream"]

log = logging.getLogger(__name__)

# An error body longer than this is not the small JSON a report needs: it is streamed through
# and reported without its body.
MAX_REPORTED_BODY_BYTES = 256 * 1024
_WRITE_TIMEOUT_S = 60.0


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Loading the CA bundle costs ~10 ms; a relay per turn builds its client every turn.
    `trust_env` keeps SSL_CERT_FILE / SSL_CERT_DIR working as they do for httpx."""
    return httpx.create_ssl_context(trust_env=True)


class Upstream:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None,
        describe: Callable[[str], str],
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise InvalidInput(f"upstream: not a URL ({type(exc).__name__})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidInput("upstream: must be an http:// or https:// URL with a host")
        self._base = url
        self._prefix = url.raw_path.split(b"?", 1)[0].rstrip(b"/")
        self._timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=read_timeout_s,
            write=_WRITE_TIMEOUT_S,
            pool=connect_timeout_s,
        )
        self._transport = transport
        self._describe_text = describe  # redacts the key out of a text
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        # trust_env: the relay reaches the provider the way the worker does (HTTPS_PROXY,
        # NO_PROXY, CA bundles); redirects are the CLI's business, never followed here.
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            transport=self._transport,
            verify=_tls_context(),
            follow_redirects=False,
            trust_env=True,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _request(self, incoming: IncomingRequest, credential: tuple[bytes, bytes]) -> httpx.Request:
        return httpx.Request(
            incoming.method.decode("ascii"),
            self._base.copy_with(raw_path=self._prefix + incoming.target),
            headers=upstream_headers(incoming.headers, credential=credential),
            content=incoming.body if incoming.had_body_framing else None,
        )

    async def forward(
        self,
        incoming: IncomingRequest,
        response: ResponseChannel,
        *,
        credential: tuple[bytes, bytes],
        stats: RelayStats,
        on_head: Callable[[ProviderResponse], None],
        clock: Clock,
    ) -> None:
        if self._client is None:
            raise RuntimeError("the upstream client is closed")
        failure: tuple[bool, str] | None = None
        try:
            answer = await self._client.send(self._request(incoming, credential), stream=True)
        except httpx.HTTPError as exc:
            failure = self._describe(exc)
        if failure is not None:  # answered outside `except`: the exception holds the key
            stats.upstream_failures += 1
            log.warning("relay: the provider could not be reached (%s)", failure[1])
            await response.whole(unreachable(timed_out=failure[0], detail=failure[1]))
            return
        try:
            await self._relay_answer(answer, response, stats=stats, on_head=on_head, clock=clock)
        except httpx.HTTPError as exc:
            stats.upstream_failures += 1
            timed_out, detail = self._describe(exc)
            log.warning("relay: the provider's answer broke off (%s)", detail)
            if response.started:
                raise ConnectionAbortedError("upstream broke off") from None
            await response.whole(unreachable(timed_out=timed_out, detail=detail))
        finally:
            await answer.aclose()

    async def _relay_answer(
        self,
        answer: httpx.Response,
        response: ResponseChannel,
        *,
        stats: RelayStats,
        on_head: Callable[[ProviderResponse], None],
        clock: Clock,
    ) -> None:
        received_at = clock()
        status = answer.status_code
        stats.statuses[status] = stats.statuses.get(status, 0) + 1
        if status == 429:
            stats.provider_429s += 1
        chunks = answer.aiter_raw()
        first: list[bytes] = []
        body: bytes | None = None
        if status >= 400:
            first, complete = await _read_up_to(chunks, MAX_REPORTED_BODY_BYTES)
            body = _decoded(answer, b"".join(first)) if complete else None
        on_head(ProviderResponse(status, dict(answer.headers), received_at, body))
        reason = answer.reason_phrase.encode("ascii", errors="replace")
        await response.start(status, downstream_headers(answer.headers.raw), reason=reason)
        for chunk in first:
            await response.send(chunk)
            stats.bytes_from_upstream += len(chunk)
        async for chunk in chunks:
            await response.send(chunk)
            stats.bytes_from_upstream += len(chunk)
        await response.end()

    def _describe(self, exc: httpx.HTTPError) -> tuple[bool, str]:
        """(timed out?, a redacted one-line detail). The exception's request holds the key."""
        text = self._describe_text(str(exc))
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return isinstance(exc, httpx.TimeoutException), detail


async def _read_up_to(chunks: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """Chunks until the end (True) or until more than `limit` bytes were read (False)."""
    read: list[bytes] = []
    size = 0
    async for chunk in chunks:
        read.append(chunk)
        size += len(chunk)
        if size > limit:
            return read, False
    return read, True


def _decoded(answer: httpx.Response, raw: bytes) -> bytes | None:
    """The body as the report's parser wants it: without its Content-Encoding."""
    if not answer.headers.get("content-encoding"):
        return raw
    try:
        return httpx.Response(answer.status_code, headers=answer.headers, content=raw).content
    except httpx.DecodingError:
        return None
