"""The request body limit (KEYRELAY_API_MAX_BODY_BYTES, api/app.py BodySizeLimit): refused with
413 before reading past the limit. What only a socket shows (the server answers and closes rather
than reading a body nobody wants) runs against a real uvicorn server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from keystore import Keystore, MasterKey, Settings
from keystore.db import create_keystore_engine, upgrade
from tests.conftest import secret_for
from tests.test_api_support import AUTH, TOKEN, ClientFactory, api_settings, make_client, serve

__all__ = ["make_client"]  # fixture

LIMIT = 4_096
TOO_LARGE = {"detail": f"request body over the limit of {LIMIT} bytes"}


def key_body(padding: int) -> bytes:
    """A valid POST /keys body of at least `padding` bytes (the name is long, not the secret)."""
    head = b'{"provider": "openai", "secret": "' + secret_for("size").encode() + b'", "name": "'
    return head + b"n" * max(1, padding - len(head) - 2) + b'"}'


def test_a_declared_length_over_the_limit_is_refused_unread(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=LIMIT)
    response = client.post(
        "/keys", content=key_body(LIMIT + 1), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert response.headers["connection"] == "close"
    assert client.get("/keys").json() == []


def test_a_body_at_the_limit_is_read(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=LIMIT)
    body = key_body(LIMIT)
    assert len(body) == LIMIT
    response = client.post("/keys", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422  # read and validated: the name is too long to store
    assert "connection" not in response.headers


def test_a_streamed_body_is_counted_and_refused_past_the_limit(
    make_client: ClientFactory,
) -> None:
    client = make_client(max_body_bytes=LIMIT)
    body = key_body(LIMIT + 1)

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield from (body[i : i + 1000] for i in range(0, len(body), 1000))

    response = client.post("/keys", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert response.headers["connection"] == "close"
    assert client.get("/keys").json() == []


@pytest.mark.parametrize("value", [0, 1_023, 64 * 1024 * 1024 + 1, "1MB"])
def test_the_limit_setting_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    monkeypatch.setenv("KEYRELAY_API_MAX_BODY_BYTES", str(value))
    with pytest.raises(ValidationError, match="api_max_body_bytes"):
        Settings(home=tmp_path)


def test_the_limit_defaults_to_one_mebibyte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYRELAY_API_MAX_BODY_BYTES", raising=False)
    assert Settings(home=tmp_path).api_max_body_bytes == 1_048_576
    monkeypatch.setenv("KEYRELAY_API_MAX_BODY_BYTES", "2048")
    assert Settings(home=tmp_path).api_max_body_bytes == 2_048


def test_openapi_documents_the_413(make_client: ClientFactory) -> None:
    schema = make_client().get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "413" in operation["responses"], (method, path)


# Over a real socket -------------------------------------------------------------------------


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[FastAPI]:
    """The real app on a SQLite keystore (the limit does not depend on the database)."""
    url = f"sqlite:///{tmp_path / 'live.db'}"
    engine = create_keystore_engine(url)
    upgrade(engine)
    store = Keystore(engine, MasterKey([MasterKey.generate().encode()]))
    yield create_app(api_settings(tmp_path, max_body_bytes=LIMIT), store)
    store.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed:
    the server may close with our unread upload in its buffer)."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def request_head(method: str, path: str, *headers: str, token: str | None = TOKEN) -> bytes:
    auth = [f"Authorization: Bearer {token}"] if token is not None else []
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *auth, *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload_forever(sock: socket.socket, stop: threading.Event) -> threading.Thread:
    """Send 1 KiB chunks on `sock` until `stop` is set or the server closes the connection."""
    chunk = b"%x\r\n%s\r\n" % (1024, b"x" * 1024)

    def upload() -> None:
        try:
            while not stop.is_set():
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed the connection: what we wait for

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    return uploader


def test_a_huge_declared_body_is_answered_without_being_sent(live_app: FastAPI) -> None:
    with serve(live_app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            request_head(
                "POST", "/keys", "Content-Type: application/json", "Content-Length: 300000000"
            )
        )  # and not one byte of the body

        response = read_until_closed(sock)

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close" in head.lower()
    assert body == f'{{"detail":"{TOO_LARGE["detail"]}"}}'.encode()


def test_a_chunked_upload_that_never_ends_is_refused_and_closed(live_app: FastAPI) -> None:
    stop = threading.Event()
    with serve(live_app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            request_head(
                "POST", "/keys", "Content-Type: application/json", "Transfer-Encoding: chunked"
            )
        )
        uploader = upload_forever(sock, stop)
        try:
            response = read_until_closed(sock)  # a hang fails here, on the socket timeout
        finally:
            stop.set()
            uploader.join(timeout=10)

    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert b"\r\nconnection: close" in response.lower()
    assert response.endswith(f'{{"detail":"{TOO_LARGE["detail"]}"}}'.encode())


@pytest.mark.parametrize("token", [None, "guess"], ids=["no-token", "wrong-token"])
def test_without_the_token_a_body_is_not_waited_for(live_app: FastAPI, token: str | None) -> None:
    # Under the limit, declared and never sent: only a server that does not read it can answer.
    with serve(live_app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = ("Content-Type: application/json", "Content-Length: 4000")
        sock.sendall(request_head("POST", "/keys", *head, token=token))

        response = read_until_closed(sock)

    status_and_headers, _, body = response.partition(b"\r\n\r\n")
    assert status_and_headers.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nwww-authenticate: bearer" in status_and_headers.lower()
    assert b"\r\nconnection: close" in status_and_headers.lower()
    assert body == b'{"detail":"missing or invalid bearer token"}'


def test_without_the_token_an_endless_upload_is_refused_and_closed(live_app: FastAPI) -> None:
    stop = threading.Event()
    with serve(live_app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            request_head("PATCH", "/keys/config", "Transfer-Encoding: chunked", token=None)
        )
        uploader = upload_forever(sock, stop)
        try:
            response = read_until_closed(sock)
        finally:
            stop.set()
            uploader.join(timeout=10)

    assert response.startswith(b"HTTP/1.1 401 "), response[:200]
    assert b"\r\nconnection: close" in response.lower()


def test_httpx_streaming_an_endless_body_gets_the_413(live_app: FastAPI) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 1024

    with serve(live_app) as port, httpx.Client(timeout=10, headers=AUTH) as client:
        response = client.post(f"http://127.0.0.1:{port}/keys", content=endless())
        assert response.status_code == 413
        assert response.json() == TOO_LARGE


def test_a_body_the_route_never_reads_closes_the_connection(live_app: FastAPI) -> None:
    with serve(live_app) as port, httpx.Client(timeout=10, headers=AUTH) as client:
        url = f"http://127.0.0.1:{port}/keys"

        def pending() -> Iterator[bytes]:
            yield b"{}"

        unread = client.request("GET", url, content=pending())
        assert unread.status_code == 200
        assert unread.headers["connection"] == "close"

        created = client.post(
            url, json={"name": "k", "provider": "openai", "secret": "sk-" + "a" * 40}
        )
        assert created.status_code == 201
        assert "connection" not in created.headers  # a body read to its end keeps the connection
        assert client.get(url).status_code == 200


def test_a_small_body_goes_through(make_client: ClientFactory) -> None:
    client: TestClient = make_client(max_body_bytes=LIMIT)
    response = client.post(
        "/keys", json={"name": "k", "provider": "openai", "secret": "sk-" + "b" * 40}
    )
    assert response.status_code == 201
