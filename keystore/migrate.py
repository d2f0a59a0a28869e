"""Import the provider tokens people already have in their environment, once."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, select

from keystore.audit import AuditWriter
from keystore.crypto import MasterKey, fingerprint
from keystore.keys import add_key, keys_t
from keystore.models import AuditEvent, KeyCreate, Provider

__all__ = ["ENV_TOKENS", "migrate_env_tokens"]

ENV_TOKENS: dict[str, Provider] = {
    "CLAUDE_CODE_OAUTH_TOKEN": "claude-code",
    "ANTHROPIC_API_KEY": "anthropic",
    "OPENAI_API_KEY": "openai",
}
_audit_t = AuditEvent.__table__  # type: ignore[attr-defined]


def _migrated_before(conn: Connection, fp: str) -> bool:
    rows = conn.execute(
        select(_audit_t.c.details).where(_audit_t.c.type == "key_migrated")
    ).scalars()
    return any(d.get("fingerprint") == fp for d in rows)


def migrate_env_tokens(
    conn: Connection, *, audit: AuditWriter, master: MasterKey, environ: Mapping[str, str]
) -> list[int]:
    """Add each token found in `environ` that was never imported (by fingerprint, so deleting an
    imported key does not bring it back on the next run). Returns the ids of the new keys."""
    added: list[int] = []
    for variable, provider in ENV_TOKENS.items():
        secret = environ.get(variable, "").strip()
        if not secret:
            continue
        fp = fingerprint(secret)
        if _migrated_before(conn, fp):
            continue
        exists = conn.execute(select(keys_t.c.id).where(keys_t.c.fingerprint == fp)).scalar()
        if exists is None:
            create = KeyCreate(name=f"env:{variable}", provider=provider, secret=secret)  # type: ignore[arg-type]
            exists = add_key(conn, audit=audit, master=master, create=create)
            added.append(exists)
        audit.record("key_migrated", key_id=exists, variable=variable, fingerprint=fp)
    return added
