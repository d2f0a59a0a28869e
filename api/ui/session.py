"""The pool page's login: a session cookie derived from an API token, and the same-origin rule
for requests that change something.

A browser cannot send `Authorization: Bearer` when a person navigates to a page, so the page
has a login form that posts a token once; the answer sets a cookie that is

- HttpOnly: the page's scripts (or a script injected into it) cannot read it;
- SameSite=Strict: no other site's page makes the browser send it;
- Path=/ui: sent to the page's own routes only, never to the API (which keeps accepting the
  Authorization header only, so the API has no cookie to forge requests with: no CSRF there);
- Secure when the page is served over HTTPS;
- not the token itself: `v1.<expiry>.<HMAC-SHA256 of the expiry, keyed by the token>`. A copied
  cookie is no API token, it expires (SESSION_LIFETIME_S), and it stops working as soon as its
  token is removed from KEYRELAY_API_TOKEN. Nothing is stored on the server, so every API
  process behind a load balancer accepts it. Logging out clears the browser's copy; a cookie
  copied before that stays valid until it expires (rotate the token to end every session).

SameSite=Strict does not stop a page on another port of the same host (the emulator, the
Prefect UI: same *site*, other origin), so every request under /ui that changes something must
prove it comes from the page's own origin (`same_origin`)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import Scope

__all__ = ["COOKIE_NAME", "COOKIE_PATH", "SESSION_LIFETIME_S", "PageSessions", "same_origin"]

COOKIE_NAME = "keyrelay_session"
COOKIE_PATH = "/ui"
SESSION_LIFETIME_S = 12 * 3600  # a night on call; then log in again
_VERSION = "v1"


class PageSessions:
    """Issues and checks session cookies for the configured tokens. Never shows a token."""

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        lifetime_s: int = SESSION_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = [t.strip().encode() for t in tokens if t.strip()]
        self.lifetime_s = lifetime_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"PageSessions(<{len(self._keys)} tokens>, lifetime_s={self.lifetime_s})"

    def issue(self, token: str) -> str:
        """A cookie value for `token` (already checked to be one of the configured tokens)."""
        expires = int(self._clock()) + self.lifetime_s
        return f"{_VERSION}.{expires}.{_sign(token.encode(), expires)}"

    def accepts(self, value: str | None) -> bool:
        """Well-formed, unexpired and signed by one of the tokens (compared in constant time
        against every token, no early exit on a match)."""
        if not value:
            return False
        version, _, rest = value.partition(".")
        expiry, _, signature = rest.partition(".")
        if version != _VERSION or not expiry.isdigit() or len(expiry) > 12:
            return False
        expires = int(expiry)
        if expires <= self._clock():
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(signature.encode(), _sign(key, expires).encode())
        return matched

    def from_scope(self, scope: Scope) -> str | None:
        """The session cookie of a request, if it sent one."""
        header = Headers(scope=scope).get("cookie")
        return cookie_parser(header).get(COOKIE_NAME) if header else None


def _sign(key: bytes, expires: int) -> str:
    return hmac.new(key, f"keyrelay-page-session:{expires}".encode(), hashlib.sha256).hexdigest()


def same_origin(scope: Scope) -> bool:
    """Whether a request that changes something comes from a page of this server's origin.

    `Sec-Fetch-Site` first: browsers set it and no script can (a forbidden header), and it holds
    behind a proxy that rewrites Host. Without it, `Origin` must name the Host the request was
    sent to. A request with neither is refused: every browser sends one of them with a POST or a
    PATCH, and other clients have the API."""
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin, host = headers.get("origin"), headers.get("host")
    if not origin or not host or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.lower()
