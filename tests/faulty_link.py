"""A TCP proxy between a test's keystore and PostgreSQL that loses connections on command, the way
a network, a restart or a failover does, without touching the server other tests share.

    link = FaultyLink()                      # forwards 127.0.0.1:<link.port> to the server
    url = link.url(pg_url)                   # the same database, through the link
    link.lose_answer_to(b"UPDATE lease_slots")  # the next such statement runs and commits on the
                                             # server, then the connection dies before its answer
    link.down(); ...; link.up()              # every connection cut, new ones refused, until up()

Real sockets, a real server: the keystore sees exactly the errors a dropped connection gives."""

from __future__ import annotations

import contextlib
import socket
import threading

from sqlalchemy.engine import make_url

__all__ = ["FaultyLink"]

# ReadyForQuery ('Z', length 5, then the transaction status): the server has answered in full.
_READY = b"Z\x00\x00\x00\x05"


class FaultyLink:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down = False
        self._lose_on: bytes | None = None
        self.answers_lost = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def lose_answer_to(self, statement_text: bytes) -> None:
        """The next statement whose text contains `statement_text` reaches the server and runs;
        its answer is dropped and its connection closed once the server has answered in full."""
        with self._lock:
            self._lose_on = statement_text

    def down(self) -> None:
        with self._lock:
            self._down = True
            cut, self._open = self._open, set()
        for sock in cut:
            _close(sock)

    def up(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self.down()
        _close(self._listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = None if self._down else socket.create_connection(self._target)
            except OSError:
                server = None
            if server is None:
                _close(client)
                continue
            with self._lock:
                self._open |= {client, server}
            doomed = threading.Event()
            threading.Thread(
                target=self._to_server, args=(client, server, doomed), daemon=True
            ).start()
            threading.Thread(
                target=self._to_client, args=(server, client, doomed), daemon=True
            ).start()

    def _to_server(
        self, client: socket.socket, server: socket.socket, doomed: threading.Event
    ) -> None:
        while data := _recv(client):
            with self._lock:
                if self._lose_on is not None and self._lose_on in data:
                    self._lose_on = None
                    doomed.set()  # before the server can see it, so its answer is never passed on
            if not _send(server, data):
                break
        self._forget(client, server)

    def _to_client(
        self, server: socket.socket, client: socket.socket, doomed: threading.Event
    ) -> None:
        answer = b""
        while data := _recv(server):
            if doomed.is_set():
                answer += data
                if answer[-6:-1] == _READY:  # committed and answered: now lose it
                    with self._lock:
                        self.answers_lost += 1
                    break
                continue
            if not _send(client, data):
                break
        self._forget(client, server)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open -= set(socks)
        _close(*socks)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
