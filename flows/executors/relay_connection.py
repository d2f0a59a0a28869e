"""The relay's server side: one HTTP/1.1 connection on asyncio streams, parsed by h11.

    await serve_connection(reader, writer, handle, refuse=answer)

Requests on the connection are taken one after the other (keep-alive). Each is read whole, its
body bounded by `max_body_bytes` (the relay forwards request bodies, which the CLI sends in one
piece, and streams responses); `handle(request, response)` then answers it through a
`ResponseChannel`, which writes each chunk as it is given (waiting for the socket to drain, so a
slow reader slows the upstream read instead of filling memory). A request h11 cannot parse, or
one over the size bound, is answered with `refuse(status, message)` and the connection closed.

Invariant: a handler that fails after its response has started cannot change the status any
more; the connection is then aborted (no terminating chunk), so the client sees a broken
response, never a truncated one that looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

__all__ = ["IncomingRequest", "ResponseChannel", "serve_connection"]

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
# (status, headers, body) of a response made whole in memory (refusals, local errors)
Whole = tuple[int, Headers, bytes]
_READ_BYTES = 64 * 1024
_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class IncomingRequest:
    method: bytes
    target: bytes  # as sent: origin-form `/path?query`, or absolute-form, `*`, authority-form
    headers: Headers = field(repr=False)  # names lowercased by h11, in order, repeats kept
    body: bytes = field(repr=False)
    had_body_framing: bool  # Content-Length or Transfer-Encoding was sent (even for 0 bytes)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        return next((value for key, value in self.headers if key == name), None)


class ResponseChannel:
    """One response on the connection: `start`, `send` (any number of chunks), `end`."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._writer = writer
        self.started = False
        self.sent_bytes = 0  # body bytes, as they went out (before chunked framing)

    async def _write(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def start(self, status: int, headers: Headers, *, reason: bytes = b"") -> None:
        self.started = True
        await self._write(h11.Response(status_code=status, headers=headers, reason=reason))

    async def send(self, chunk: bytes) -> None:
        if chunk:
            await self._write(h11.Data(data=chunk))
            self.sent_bytes += len(chunk)

    async def end(self) -> None:
        await self._write(h11.EndOfMessage())

    async def whole(self, answer: Whole, *, close: bool = False) -> None:
        """A response made in memory; `close` ends the connection after it."""
        status, headers, body = answer
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await self.start(status, headers)
        await self.send(body)
        await self.end()


Handle = Callable[[IncomingRequest, ResponseChannel], Awaitable[None]]
Refuse = Callable[[int, str], Whole]


class _TooLarge(Exception):
    pass


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(_READ_BYTES))  # b"": the peer closed


async def _read_body(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    declared: int | None,
    max_body_bytes: int,
) -> bytes | None:
    """The request body; None when the client went away first."""
    if declared is not None and declared > max_body_bytes:
        raise _TooLarge
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
    parts: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body_bytes:
                raise _TooLarge
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        else:  # ConnectionClosed
            return None


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is an integer
    return None


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Handle,
    *,
    refuse: Refuse,
    max_body_bytes: int,
) -> None:
    """Serve requests on this connection until either side closes it; never raises."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
    response: ResponseChannel | None = None
    try:
        while True:
            event = await _next_event(conn, reader)
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed (or a stray event h11 would refuse next anyway)
            framed = any(
                name in (b"content-length", b"transfer-encoding") for name, _ in event.headers
            )
            body = await _read_body(
                conn,
                reader,
                writer,
                declared=_content_length(event),
                max_body_bytes=max_body_bytes,
            )
            if body is None:
                return
            request = IncomingRequest(
                method=bytes(event.method),
                target=bytes(event.target),
                headers=[(bytes(k), bytes(v)) for k, v in event.headers],
                body=body,
                had_body_framing=framed,
            )
            response = ResponseChannel(conn, writer)
            await handle(request, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE (HTTP/1.0, `Connection: close`) or a broken exchange
            conn.start_next_cycle()
            response = None
    except _TooLarge:
        await _refuse(conn, writer, refuse(413, "request body too large for the relay"))
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        await _refuse(conn, writer, refuse(status, f"malformed HTTP request: {exc}"))
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away; nothing to answer
    except asyncio.CancelledError:
        raise  # the relay is stopping
    except Exception as exc:
        # A handler bug must not take the relay down; the request is lost, the client sees a
        # closed connection (and the CLI ends the turn with a connection error). The type only:
        # this layer cannot redact, and an exception's text may quote a request.
        state = "streaming" if response is not None and response.started else "reading"
        log.error("relay connection failed while %s: %s", state, type(exc).__name__)
    finally:
        _close(writer, abort=conn.our_state not in (h11.DONE, h11.IDLE, h11.MUST_CLOSE))


async def _refuse(conn: h11.Connection, writer: asyncio.StreamWriter, answer: Whole) -> None:
    # IDLE: the request could not be parsed at all (h11 lets a server answer that with a 400).
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # a response already started: nothing sensible left to say
    status, headers, body = answer
    headers = [*headers, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            writer.write(conn.send(event) or b"")
        await writer.drain()


def _close(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    if abort:
        writer.transport.abort()  # a response cut short must not look complete
    else:
        writer.close()
