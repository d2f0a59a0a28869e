"""The pool page: every key's state, limits, leases and holders, live, with the actions a
person needs at 3 a.m. (reset a key's cooling, disable and enable it). Plain HTML, CSS and
JavaScript shipped in the package (static/), served by `keyrelay api` under /ui.

    create_page_app(PageConfig(...))   # the routes (app.py)
    PageGate                           # its access rules and budget (gate.py)"""

from api.ui.app import PageConfig, create_page_app
from api.ui.gate import PAGE_PREFIX, PAGE_RATE_LIMIT, POLL_INTERVAL_S, PageGate
from api.ui.session import PageSessions

__all__ = [
    "PAGE_PREFIX",
    "PAGE_RATE_LIMIT",
    "POLL_INTERVAL_S",
    "PageConfig",
    "PageGate",
    "PageSessions",
    "create_page_app",
]
