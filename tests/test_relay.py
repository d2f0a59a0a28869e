"""The per-turn relay over real sockets: the emulator as the provider (and, for what the emulator
cannot show, a tiny upstream app under uvicorn), httpx and raw sockets as the CLI. No mocks.

The real `claude` CLI through the relay is in test_relay_cli.py (slow).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from api.emulator import (
    EmulatorConfig,
    LimitRule,
    ManualClock,
    RunningEmulator,
    fingerprint,
    serve_emulator,
)
from flows.executors.base import ProviderResponse
from flows.executors.relay import Relay, key_kind
from keystore import InvalidInput, RateLimitSignal
from keystore.ratelimits import parse_rate_limit
from tests.executors.helpers import api_key, oauth_token

pytest_plugins = ["tests.emulator.fixtures", "tests.executors.fixtures"]
pytestmark = pytest.mark.anyio

API_KEY = api_key("relay")
OAUTH = oauth_token("relay")
KINDS = pytest.mark.parametrize("secret", [API_KEY, OAUTH], ids=["api_key", "oauth"])
REQUEST = {
    "model": "claude-test",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
PATH = "/v1/messages?beta=true"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)
EMULATOR_T0 = NOW.timestamp()  # where the emulator fixtures' ManualClock starts


def credential(kind: str, value: str) -> dict[str, str]:
    """The headers the CLI sends a credential of this kind in (CLAUDE_CLI_NOTES.md)."""
    if kind == "api_key":
        return {"x-api-key": value}
    return {"authorization": f"Bearer {value}", "anthropic-beta": "oauth-2025-04-20"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]  # as received, without hop-by-hop ones
    body: bytes  # the raw bytes (still compressed, if they were)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
) -> Answer:
    content = json.dumps(body or REQUEST).encode()
    async with client.stream("POST", url, headers=headers, content=content) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    kept = [
        (k.decode().lower(), v.decode())
        for k, v in response.headers.raw
        if k.decode().lower() not in HOP_BY_HOP
    ]
    return Answer(response.status_code, kept, raw)


async def raw_exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (what httpx would never send) and read until the relay closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def error_type(body: bytes) -> str:
    parsed = json.loads(body)
    assert parsed["type"] == "error" and parsed["request_id"].startswith("req_keyrelay_")
    return str(parsed["error"]["type"])


class Heard:
    """A `report` that keeps what it hears."""

    def __init__(self) -> None:
        self.answers: list[ProviderResponse] = []
        self.event = asyncio.Event()

    async def __call__(self, answer: ProviderResponse) -> None:
        self.answers.append(answer)
        self.event.set()


# -- a provider stand-in for what the emulator cannot show ------------------------------------


@dataclass
class Recorded:
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class TinyUpstream:
    """An ASGI app that records each request and answers it with `answer(request, send)`."""

    answer: Callable[[Recorded, Send], Awaitable[None]]
    requests: list[Recorded] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Recorded(
            scope["method"], scope["raw_path"], scope["query_string"], scope["headers"], body
        )
        self.requests.append(request)
        await self.answer(request, send)


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free port in a thread (as serve_emulator does); its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the upstream did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


async def respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], *chunks: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for index, chunk in enumerate(chunks):
        await send(
            {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1}
        )


# -- byte for byte ------------------------------------------------------------------------------


@pytest.fixture
def twins() -> Iterator[tuple[RunningEmulator, RunningEmulator]]:
    """Two fresh emulators on the same clock and config: the same request gets the same bytes
    from either (request and message ids count per emulator)."""
    config = EmulatorConfig(
        limits=[LimitRule(key=key, requests=100, window_s=60) for key in (API_KEY, OAUTH)]
    )
    with (
        serve_emulator(config, clock=ManualClock(EMULATOR_T0)) as direct,
        serve_emulator(config, clock=ManualClock(EMULATOR_T0)) as relayed,
    ):
        yield direct, relayed


@KINDS
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_an_answer_comes_back_byte_identical_to_a_direct_call_with_the_real_key_upstream(
    twins: tuple[RunningEmulator, RunningEmulator], secret: str, stream: bool
) -> None:
    direct, relayed = twins
    kind = key_kind(secret)
    body = REQUEST | {"stream": stream}
    async with httpx.AsyncClient() as client:
        expected = await post(
            client, direct.base_url + PATH, headers=credential(kind, secret), body=body
        )
        async with Relay(secret=secret, upstream=relayed.base_url) as relay:
            placeholder = relay.placeholder
            got = await post(
                client, relay.base_url + PATH, headers=credential(kind, placeholder), body=body
            )
    assert got == expected
    assert expected.status == 200
    limit_header = {
        "api_key": "anthropic-ratelimit-requests-remaining",
        "oauth": "anthropic-ratelimit-unified-status",
    }[kind]
    assert expected.header(limit_header) is not None
    if stream:
        assert expected.header("content-type") == "text/event-stream; charset=utf-8"
        assert expected.body.startswith(b"event: message_start")
    # Upstream saw the real key, of the right kind, in the right header; never the placeholder.
    (entry,) = relayed.admin.log()
    assert (entry.key_fingerprint, entry.credential_kind, entry.auth) == (
        fingerprint(secret),
        kind,
        "x-api-key" if kind == "api_key" else "bearer",
    )
    assert relayed.admin.key(api_key=placeholder).requests == 0
    assert relay.stats.forwarded == 1 and relay.stats.bytes_from_upstream == len(expected.body)


@KINDS
async def test_the_cli_gets_a_fresh_placeholder_of_the_keys_kind_dead_after_the_turn(
    emu: RunningEmulator, secret: str
) -> None:
    kind = key_kind(secret)
    async with (
        Relay(secret=secret, upstream=emu.base_url) as first,
        Relay(secret=secret, upstream=emu.base_url) as second,
    ):
        variable = {"api_key": "ANTHROPIC_API_KEY", "oauth": "CLAUDE_CODE_OAUTH_TOKEN"}[kind]
        assert first.child_env() == {
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{first.port}",
            variable: first.placeholder,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        prefix = {"api_key": "sk-ant-api03-keyrelay-", "oauth": "sk-ant-oat01-keyrelay-"}[kind]
        assert first.placeholder.startswith(prefix) and len(first.placeholder) > len(prefix) + 40
        assert first.placeholder != second.placeholder and first.port != second.port
        assert repr(first) == f"Relay(port={first.port})"
        port, placeholder = first.port, first.placeholder
    with pytest.raises(RuntimeError):
        first.child_env()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(
                f"http://127.0.0.1:{port}{PATH}", headers=credential(kind, placeholder)
            )
    assert emu.admin.log() == []


async def test_a_relay_refuses_bad_settings_and_a_second_start(emu: RunningEmulator) -> None:
    with pytest.raises(InvalidInput):
        Relay(secret="", upstream=emu.base_url)
    with pytest.raises(InvalidInput):
        Relay(secret=API_KEY, upstream="ftp://example.com")
    with pytest.raises(InvalidInput):
        Relay(secret=API_KEY, upstream=emu.base_url, kind="session")  # type: ignore[arg-type]
    relay = Relay(secret=API_KEY, upstream=emu.base_url)
    async with relay:
        pass
    with pytest.raises(RuntimeError):
        await relay.__aenter__()


# -- what is refused ----------------------------------------------------------------------------


def _wrong(placeholder: str) -> str:
    return placeholder[:-1] + ("0" if placeholder[-1] != "0" else "1")


@KINDS
@pytest.mark.parametrize("offer", ["nothing", "wrong", "the_real_key", "the_other_header"])
async def test_a_request_without_the_placeholder_is_refused_and_nothing_reaches_upstream(
    emu: RunningEmulator, secret: str, offer: str
) -> None:
    kind = key_kind(secret)
    async with Relay(secret=secret, upstream=emu.base_url) as relay, httpx.AsyncClient() as client:
        other = "oauth" if kind == "api_key" else "api_key"
        headers = {
            "nothing": {},
            "wrong": credential(kind, _wrong(relay.placeholder)),
            "the_real_key": credential(kind, secret),
            "the_other_header": credential(other, relay.placeholder),
        }[offer]
        answer = await post(client, relay.base_url + PATH, headers=headers)
    assert answer.status == 401 and error_type(answer.body) == "authentication_error"
    assert emu.admin.log() == []
    assert (relay.stats.refused, relay.stats.forwarded) == (1, 0)


async def test_another_host_or_a_proxy_style_request_is_refused(emu: RunningEmulator) -> None:
    body = json.dumps(REQUEST).encode()
    async with Relay(secret=API_KEY, upstream=emu.base_url) as relay:
        own = f"127.0.0.1:{relay.port}"
        tail = (
            f"x-api-key: {relay.placeholder}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode() + body
        attempts = {
            "other host": "POST /v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\n",
            "localhost": f"POST /v1/messages HTTP/1.1\r\nhost: localhost:{relay.port}\r\n",
            "absolute-form": f"POST http://{own}/v1/messages HTTP/1.1\r\nhost: {own}\r\n",
            "absolute elsewhere": (
                "POST http://api.anthropic.com/v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\n"
            ),
            "CONNECT": "CONNECT api.anthropic.com:443 HTTP/1.1\r\nhost: api.anthropic.com:443\r\n",
            "no host (HTTP/1.0)": "POST /v1/messages HTTP/1.0\r\n",
        }
        for name, head in attempts.items():
            request = head.encode() + (tail if not head.startswith("CONNECT") else b"\r\n")
            status, answer = await raw_exchange(relay.port, request)
            assert (status, error_type(answer)) == (403, "permission_error"), name
    assert emu.admin.log() == []
    assert (relay.stats.refused, relay.stats.forwarded) == (len(attempts), 0)


async def test_a_request_that_is_not_http_is_a_400(emu: RunningEmulator) -> None:
    async with Relay(secret=API_KEY, upstream=emu.base_url) as relay:
        status, answer = await raw_exchange(relay.port, b"GARBAGE\r\n\r\n")
    assert (status, error_type(answer)) == (400, "invalid_request_error")
    assert emu.admin.log() == []


async def test_a_body_over_the_bound_is_refused_before_it_is_read(emu: RunningEmulator) -> None:
    async with Relay(secret=API_KEY, upstream=emu.base_url) as relay:
        head = (
            f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{relay.port}\r\n"
            f"x-api-key: {relay.placeholder}\r\ncontent-length: {64 * 1024 * 1024}\r\n\r\n"
        )
        status, answer = await raw_exchange(relay.port, head.encode())
    assert (status, error_type(answer)) == (413, "request_too_large")
    assert emu.admin.log() == []


# -- report ---------------------------------------------------------------------------------------


@KINDS
async def test_report_hears_every_answer_with_its_limit_headers_as_it_arrives(
    emu: RunningEmulator, secret: str
) -> None:
    kind = key_kind(secret)
    emu.admin.set_limits([LimitRule(key=secret, requests=2, window_s=60)])
    heard = Heard()
    async with (
        # On the emulator's clock, so the keystore's parser can use its Date to read the resets.
        Relay(secret=secret, upstream=emu.base_url, report=heard, clock=lambda: NOW) as relay,
        httpx.AsyncClient() as client,
    ):
        headers = credential(kind, relay.placeholder)
        answers = [await post(client, relay.base_url + PATH, headers=headers) for _ in range(3)]
    assert [a.status for a in answers] == [h.status for h in heard.answers] == [200, 200, 429]
    refused, refusal = answers[2], heard.answers[2]
    assert refusal.body == refused.body  # the error body, read first, went to the CLI too
    assert all(h.body is None for h in heard.answers[:2])  # a success is reported at its head
    assert all(h.received_at == NOW for h in heard.answers)
    if kind == "api_key":
        assert [h.headers["anthropic-ratelimit-requests-remaining"] for h in heard.answers] == [
            "1",
            "0",
            "0",
        ]
        assert refusal.headers["retry-after"] == refused.header("retry-after") == "60"
    else:
        statuses = [h.headers["anthropic-ratelimit-unified-status"] for h in heard.answers]
        assert statuses == ["allowed", "allowed_warning", "rejected"]
        assert refusal.headers["anthropic-ratelimit-unified-reset"] == refused.header(
            "anthropic-ratelimit-unified-reset"
        )
    # What the keystore will make of it: the refusal, with the reset the provider named.
    signal = parse_rate_limit(
        "claude-code",
        status=refusal.status,
        headers=refusal.headers,
        body=refusal.body,
        received_at=refusal.received_at,
    )
    assert signal is not None
    assert signal.resets_at == NOW + timedelta(seconds=60)
    stats = relay.stats
    assert (stats.forwarded, stats.provider_429s, stats.local_refusals) == (3, 1, 0)
    assert stats.statuses == {200: 2, 429: 1}


async def test_a_failing_report_is_logged_without_the_key_and_the_relay_goes_on(
    emu: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def report(answer: ProviderResponse) -> None:
        raise RuntimeError(f"the keystore is gone while recording for {API_KEY}")

    async with (
        Relay(secret=API_KEY, upstream=emu.base_url, report=report) as relay,
        httpx.AsyncClient() as client,
    ):
        headers = credential("api_key", relay.placeholder)
        answers = [await post(client, relay.base_url + PATH, headers=headers) for _ in range(2)]
    assert [a.status for a in answers] == [200, 200]
    assert caplog.text.count("the report of a 200 answer failed (RuntimeError") == 2
    assert API_KEY not in caplog.text


async def test_a_hung_report_delays_no_answer_and_the_turn_end_by_its_bound_only(
    emu: RunningEmulator,
) -> None:
    never = asyncio.Event()
    started: list[int] = []

    async def report(answer: ProviderResponse) -> None:
        started.append(answer.status)
        await never.wait()

    relay = Relay(secret=API_KEY, upstream=emu.base_url, report=report, report_wait_s=0.5)
    async with relay, httpx.AsyncClient() as client:
        headers = credential("api_key", relay.placeholder)
        begun = time.monotonic()
        answer = await post(client, relay.base_url + PATH, headers=headers)
        answered_s = time.monotonic() - begun
        begun = time.monotonic()
    exited_s = time.monotonic() - begun
    assert answer.status == 200 and started == [200]
    assert answered_s < 0.5  # the answer did not wait for its report
    assert 0.5 <= exited_s < 2.0  # the exit waited for it, but only so long


# -- gate ---------------------------------------------------------------------------------------


@KINDS
async def test_the_gates_refusal_is_a_local_429_with_its_reset_and_costs_no_provider_call(
    emu: RunningEmulator, secret: str
) -> None:
    kind = key_kind(secret)
    signal = RateLimitSignal(
        kind="usage_limit" if kind == "oauth" else "rate_limit",
        resets_at=NOW + timedelta(seconds=30.2),
        retryable=True,
        source="anthropic-ratelimit-unified-7d-reset"
        if kind == "oauth"
        else "anthropic-ratelimit-requests-reset",
    )

    async def gate() -> RateLimitSignal | None:
        return signal

    async with (
        Relay(secret=secret, upstream=emu.base_url, gate=gate, clock=lambda: NOW) as relay,
        httpx.AsyncClient() as client,
    ):
        answer = await post(
            client, relay.base_url + PATH, headers=credential(kind, relay.placeholder)
        )
    assert answer.status == 429 and answer.header("retry-after") == "31"
    assert error_type(answer.body) == "rate_limit_error"
    assert "No request was sent to the provider" in json.loads(answer.body)["error"]["message"]
    if kind == "oauth":
        assert answer.header("anthropic-ratelimit-unified-status") == "rejected"
        reset = math.ceil((NOW + timedelta(seconds=30.2)).timestamp())
        assert answer.header("anthropic-ratelimit-unified-reset") == str(reset)
        assert answer.header("anthropic-ratelimit-unified-representative-claim") == "seven_day"
    assert emu.admin.log() == []
    stats = relay.stats
    assert (stats.local_refusals, stats.provider_429s, stats.forwarded) == (1, 0, 0)
    assert relay.last_refusal is signal
    # The CLI's side of it reads as the same limit, with the reset rounded up to the second.
    parsed = parse_rate_limit(
        "claude-code",
        status=answer.status,
        headers=dict(answer.headers),
        body=answer.body,
        received_at=NOW,
    )
    assert parsed is not None and parsed.kind == signal.kind
    assert parsed.resets_at == NOW + timedelta(seconds=31)


async def test_the_gate_is_asked_once_the_last_answer_was_reported(emu: RunningEmulator) -> None:
    """A keystore that learns `remaining: 0` from a success refuses the next request locally,
    even when recording the answer takes longer than the CLI takes to ask again."""
    emu.admin.set_limits([LimitRule(key=API_KEY, requests=1, window_s=60)])
    learned: dict[str, str] = {}

    async def report(answer: ProviderResponse) -> None:
        await asyncio.sleep(0.2)  # a keystore write, in a thread, on a busy database
        learned.update(answer.headers)

    async def gate() -> RateLimitSignal | None:
        if learned.get("anthropic-ratelimit-requests-remaining") != "0":
            return None
        resets_at = datetime.fromisoformat(learned["anthropic-ratelimit-requests-reset"])
        return RateLimitSignal("rate_limit", resets_at, True, "anthropic-ratelimit-requests-reset")

    async with (
        Relay(secret=API_KEY, upstream=emu.base_url, report=report, gate=gate) as relay,
        httpx.AsyncClient() as client,
    ):
        headers = credential("api_key", relay.placeholder)
        answers = [await post(client, relay.base_url + PATH, headers=headers) for _ in range(2)]
    assert [a.status for a in answers] == [200, 429]
    assert len(emu.admin.log()) == 1  # the second never reached the provider
    assert (relay.stats.local_refusals, relay.stats.provider_429s) == (1, 0)


async def test_a_failing_or_slow_gate_lets_the_request_through(
    emu: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    calls: list[str] = []

    async def gate() -> RateLimitSignal | None:
        calls.append("asked")
        if len(calls) == 1:
            raise RuntimeError(f"no database for {API_KEY}")
        await asyncio.sleep(5)
        return RateLimitSignal("rate_limit", None, True, "never seen")

    async with (
        Relay(secret=API_KEY, upstream=emu.base_url, gate=gate, gate_timeout_s=0.2) as relay,
        httpx.AsyncClient() as client,
    ):
        headers = credential("api_key", relay.placeholder)
        answers = [await post(client, relay.base_url + PATH, headers=headers) for _ in range(2)]
    assert [a.status for a in answers] == [200, 200] and len(emu.admin.log()) == 2
    assert "the gate failed, forwarding anyway (RuntimeError" in caplog.text
    assert "the gate failed, forwarding anyway (TimeoutError" in caplog.text
    assert API_KEY not in caplog.text


# -- upstream failures --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_upstream_that_is_down_is_a_502_in_anthropic_shape() -> None:
    upstream = f"http://127.0.0.1:{_closed_port()}"
    async with Relay(secret=API_KEY, upstream=upstream) as relay, httpx.AsyncClient() as client:
        answer = await post(
            client, relay.base_url + PATH, headers=credential("api_key", relay.placeholder)
        )
    assert (answer.status, error_type(answer.body)) == (502, "api_error")
    assert b"could not be reached (ConnectError" in answer.body
    assert API_KEY.encode() not in answer.body
    assert (relay.stats.forwarded, relay.stats.upstream_failures) == (1, 1)


async def test_an_upstream_that_never_answers_is_a_504() -> None:
    # Listening but never accepting: the kernel completes the handshake, nothing answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        upstream = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with (
            Relay(secret=API_KEY, upstream=upstream, read_timeout_s=0.3) as relay,
            httpx.AsyncClient() as client,
        ):
            headers = credential("api_key", relay.placeholder)
            answer = await post(client, relay.base_url + PATH, headers=headers)
    assert (answer.status, error_type(answer.body)) == (504, "api_error")
    assert b"did not answer in time (ReadTimeout" in answer.body


async def test_an_answer_that_breaks_off_upstream_breaks_off_for_the_cli_too() -> None:
    async def answer(request: Recorded, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"event: ping\n\n", "more_body": True})
        raise RuntimeError("the provider's connection dropped")  # uvicorn closes the socket

    with serve_app(TinyUpstream(answer)) as upstream:
        async with Relay(secret=API_KEY, upstream=upstream) as relay, httpx.AsyncClient() as client:
            headers = credential("api_key", relay.placeholder)
            with pytest.raises(httpx.RemoteProtocolError):
                await post(client, relay.base_url + PATH, headers=headers)
    assert relay.stats.upstream_failures == 1


async def test_the_turn_ending_closes_idle_and_streaming_connections_at_once() -> None:
    """A CLI that left a keep-alive connection open, or a stream still running, does not hold
    the turn's end; the stream is cut off (never made to look complete)."""
    release = threading.Event()

    async def answer(request: Recorded, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"event: ping\n\n", "more_body": True})
        await asyncio.to_thread(release.wait, 10)  # the rest of the stream never comes

    with serve_app(TinyUpstream(answer)) as upstream:
        relay = Relay(secret=API_KEY, upstream=upstream)
        async with httpx.AsyncClient() as client:
            await relay.__aenter__()
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", relay.port)
            headers = credential("api_key", relay.placeholder)
            async with client.stream("POST", relay.base_url + PATH, headers=headers) as response:
                chunks = response.aiter_raw()
                assert await anext(chunks) == b"event: ping\n\n"
                begun = time.monotonic()
                await relay.__aexit__(None, None, None)
                exited_s = time.monotonic() - begun
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in chunks:
                        pass
            assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed by the relay
            idle_writer.close()
        release.set()
    assert exited_s < 1.0


# -- streaming and pass-through -----------------------------------------------------------------


async def test_a_stream_is_relayed_chunk_by_chunk_and_reported_at_its_head() -> None:
    """The upstream holds the rest of its stream until the client has the first bytes: a relay
    that buffered would deliver nothing, and the test would time out."""
    first_delivered = threading.Event()
    upstream_waited: list[bool] = []

    async def answer(request: Recorded, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"event: ping\n\n", "more_body": True})
        upstream_waited.append(await asyncio.to_thread(first_delivered.wait, 10))
        await send({"type": "http.response.body", "body": b"event: message_stop\n\n"})

    heard = Heard()
    with serve_app(TinyUpstream(answer)) as upstream:
        async with (
            Relay(secret=API_KEY, upstream=upstream, report=heard) as relay,
            httpx.AsyncClient() as client,
        ):
            headers = credential("api_key", relay.placeholder)
            async with client.stream("POST", relay.base_url + PATH, headers=headers) as response:
                chunks = response.aiter_raw()
                first = await anext(chunks)
                await asyncio.wait_for(heard.event.wait(), 5)  # reported before the stream ended
                assert not upstream_waited  # the upstream is still in the middle of its stream
                first_delivered.set()
                rest = b"".join([chunk async for chunk in chunks])
    assert first == b"event: ping\n\n" and rest == b"event: message_stop\n\n"
    assert upstream_waited == [True]
    assert [(h.status, h.body) for h in heard.answers] == [(200, None)]


async def test_a_compressed_body_passes_as_it_came_and_its_report_is_decoded() -> None:
    error = json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    ).encode()
    packed = gzip.compress(error)

    async def answer(request: Recorded, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"content-length", str(len(packed)).encode()),
            (b"retry-after", b"7"),
        ]
        await respond(send, 429, headers, packed)

    heard = Heard()
    with serve_app(TinyUpstream(answer)) as upstream:
        async with (
            Relay(secret=API_KEY, upstream=upstream, report=heard) as relay,
            httpx.AsyncClient() as client,
        ):
            headers = credential("api_key", relay.placeholder) | {"accept-encoding": "gzip"}
            got = await post(client, relay.base_url + PATH, headers=headers)
    assert got.status == 429 and got.body == packed
    assert got.header("content-encoding") == "gzip" and got.header("content-length") == str(
        len(packed)
    )
    (report,) = heard.answers
    assert report.body == error and report.headers["retry-after"] == "7"


async def test_method_path_query_and_body_pass_and_only_the_credential_is_swapped() -> None:
    async def answer(request: Recorded, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"x-provider-header", b"kept"),
            (b"proxy-authenticate", b"Basic realm=upstream"),
        ]
        await respond(send, 200, headers, b'{"ok":true}')

    upstream_app = TinyUpstream(answer)
    body = b'{"model":"m","messages":[{"role":"user","content":"caf\xc3\xa9"}]}'
    with serve_app(upstream_app) as upstream:
        async with (
            Relay(secret=API_KEY, upstream=upstream + "/gateway/anthropic/") as relay,
            httpx.AsyncClient() as client,
        ):
            headers = {
                "x-api-key": relay.placeholder,
                "authorization": "Bearer something-else",
                "anthropic-beta": "claude-code-20250219",
                "connection": "keep-alive, x-hop",
                "x-hop": "for the relay only",
                "proxy-authorization": "Basic c2VjcmV0",
                "accept-encoding": "br",
            }
            response = await client.put(
                relay.base_url + "/v1/things?beta=true&q=a%2Fb&q=c",
                headers=headers,
                content=body,
            )
            origin = upstream.removeprefix("http://")
            placeholder = relay.placeholder
    assert response.status_code == 200 and response.content == b'{"ok":true}'
    assert response.headers["x-provider-header"] == "kept"
    assert "proxy-authenticate" not in response.headers
    (seen,) = upstream_app.requests
    assert (seen.method, seen.raw_path, seen.query, seen.body) == (
        "PUT",
        b"/gateway/anthropic/v1/things",
        b"beta=true&q=a%2Fb&q=c",
        body,
    )
    assert seen.header(b"x-api-key") == API_KEY.encode()
    assert seen.header(b"host") == origin.encode()
    assert seen.header(b"anthropic-beta") == b"claude-code-20250219"
    assert seen.header(b"accept-encoding") == b"br"
    for dropped in (b"authorization", b"x-hop", b"proxy-authorization"):
        assert seen.header(dropped) is None, dropped
    assert placeholder.encode() not in b"".join(v for _, v in seen.headers)


# -- the key stays inside -----------------------------------------------------------------------


async def test_the_key_is_in_no_answer_log_line_repr_or_stat(
    emu: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emu.admin.set_limits([LimitRule(key=API_KEY, requests=1, window_s=60)])
    down = f"http://127.0.0.1:{_closed_port()}"
    bodies: list[bytes] = []
    async with httpx.AsyncClient() as client:
        for upstream in (emu.base_url, down):
            relay = Relay(secret=API_KEY, upstream=upstream)
            async with relay:
                for headers in (credential("api_key", relay.placeholder), {"x-api-key": API_KEY}):
                    for _ in range(2):
                        answer = await post(client, relay.base_url + PATH, headers=headers)
                        bodies.append(answer.body + repr(answer.headers).encode())
                texts = [repr(relay), str(relay.stats), str(vars(relay.stats))]
            assert all(API_KEY not in text for text in texts)
    assert all(API_KEY.encode() not in body for body in bodies)
    assert API_KEY not in caplog.text
    assert len(bodies) == 8
