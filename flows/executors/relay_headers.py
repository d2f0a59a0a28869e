"""Which headers cross the relay, each way (RFC 9110 7.6.1 for the hop-by-hop ones).

Towards the provider: everything the CLI sent, except hop-by-hop headers, `Host` and the body's
framing (the upstream client sets them for its own connection) and every credential header; then
the one credential the real key needs. Back to the CLI: everything the provider sent, except
hop-by-hop headers. `Content-Length` and `Content-Encoding` pass unchanged, as the body does.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Headers", "downstream_headers", "upstream_headers"]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The placeholder arrives in one of these; the real key leaves in one of these.
CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"authorization"})
_FRAMING = frozenset({b"host", b"content-length", b"expect"})


def _named_by_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Headers a `Connection` header declares hop-by-hop (`Connection: close, X-Foo`)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


def upstream_headers(
    headers: Iterable[tuple[bytes, bytes]], *, credential: tuple[bytes, bytes]
) -> Headers:
    incoming = list(headers)
    dropped = HOP_BY_HOP | CREDENTIAL_HEADERS | _FRAMING | _named_by_connection(incoming)
    out = [(name, value) for name, value in incoming if name.lower() not in dropped]
    if not any(name.lower() == b"accept-encoding" for name, _ in out):
        # The body comes back as the provider sent it: do not let the upstream client ask for a
        # compression the CLI did not.
        out.append((b"accept-encoding", b"identity"))
    out.append(credential)
    return out


def downstream_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    incoming = list(headers)
    dropped = HOP_BY_HOP | _named_by_connection(incoming)
    return [(name, value) for name, value in incoming if name.lower() not in dropped]
