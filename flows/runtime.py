"""The keystore a flow-run process uses: opened once from KEYRELAY_* settings, with every audit
row it writes also emitted as a Prefect event."""

from __future__ import annotations

import threading

from flows.blocking import in_thread
from flows.observability import emit_audit_event
from keystore import Keystore, Settings, open_keystore

__all__ = ["flow_keystore", "in_thread", "reset_flow_keystore"]

_lock = threading.Lock()
_store: Keystore | None = None
_store_url: str | None = None


def flow_keystore() -> Keystore:
    """The process's keystore (reopened when KEYRELAY_DATABASE_URL changes, e.g. between tests)."""
    global _store, _store_url
    url = Settings().resolved_database_url
    with _lock:
        if _store is None or _store_url != url:
            if _store is not None:
                _store.close()
            _store = open_keystore(url)
            _store.add_audit_hook(emit_audit_event)
            _store_url = url
        return _store


def reset_flow_keystore() -> None:
    global _store, _store_url
    with _lock:
        if _store is not None:
            _store.close()
        _store, _store_url = None, None
