"""Re-encrypting every stored secret under the first master key (`keyrelay master-key rotate`)."""

from __future__ import annotations

from sqlalchemy import select

from keystore.audit import AuditWriter
from keystore.crypto import MasterKey
from keystore.errors import MasterKeyError
from keystore.keys import keys_t

__all__ = ["reencrypt_all"]


def reencrypt_all(writer: AuditWriter, master: MasterKey) -> int:
    """Re-encrypt every key in one transaction and return how many were re-encrypted.

    All or nothing: if any key does not decrypt with the master keys this process has, nothing
    is changed and MasterKeyError names those keys (a rotation that silently skipped them would
    leave them under a key that is about to be dropped)."""
    conn = writer.conn
    rows = conn.execute(select(keys_t.c.id, keys_t.c.ciphertext).with_for_update()).all()
    updates, failed = [], []
    for row in rows:
        try:
            updates.append((row.id, master.reencrypt(row.ciphertext)))
        except MasterKeyError:
            failed.append(row.id)
    if failed:
        ids = ", ".join(map(str, failed))
        raise MasterKeyError(
            f"key(s) {ids} do not decrypt with this process's master keys; nothing was "
            "re-encrypted (start it with the master key those keys were stored under)"
        )
    for key_id, ciphertext in updates:
        conn.execute(keys_t.update().where(keys_t.c.id == key_id).values(ciphertext=ciphertext))
    writer.record("master_key_rotated", rows=len(updates), keys_in_use=master.key_count)
    return len(updates)
