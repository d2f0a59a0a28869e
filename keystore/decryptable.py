"""Keys whose secret this process's master key cannot decrypt.

A secret that does not decrypt here says something about this process (its KEYRELAY_MASTER_KEY is
wrong, or the key was stored under a master key it never had), not about the key: a process with
the right master key leases it fine. So nothing shared is marked. (Marking the row unusable for
everyone, as keyrelay once did, let one misconfigured worker take every key out of the pool of
every worker on its first run, until a person reset each key.) Instead, in this process only:

- acquisition skips such keys and chooses among the keys that decrypt here (`choose_decryptable`);
  when none of a provider's keys in the pool decrypts here, it refuses with MasterKeyError;
- `keys list`, `status` and `explain` show them as `unusable`, "cannot be decrypted here"
  (`keys_here`, `status_here`, `explain_here`), instead of "available".

Both ask `MasterKey.undecryptable`, which checks each stored token's HMAC (about 9 us per key and
master key) without decrypting anything, so every listing can afford it.

Rows that older versions marked (`unusable_kind = "decrypt"`) stay unusable until `keyrelay keys
reset`; nothing writes that mark any more: from one process, a key cannot be known to be broken
for everyone."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, select

from keystore.candidates import Candidate, candidates, exhausted
from keystore.crypto import MasterKey
from keystore.errors import MasterKeyError
from keystore.keys import keys_t
from keystore.models import KeyPublic
from keystore.views import CandidatePublic, Explanation, PoolStatus

__all__ = [
    "check_master_key",
    "choose_decryptable",
    "explain_here",
    "key_here",
    "keys_here",
    "not_here_reason",
    "status_here",
    "undecryptable_ids",
]

_OUT_OF_POOL = ("disabled", "unusable")  # states that say more than "cannot be decrypted here"


def undecryptable_ids(
    conn: Connection,
    master: MasterKey,
    *,
    provider: str | None = None,
    key_ids: Sequence[int] | None = None,
) -> set[int]:
    """Ids of the keys (of `provider`, or among `key_ids`) whose secret does not decrypt here."""
    query = select(keys_t.c.id, keys_t.c.ciphertext)
    if provider is not None:
        query = query.where(keys_t.c.provider == provider)
    if key_ids is not None:
        query = query.where(keys_t.c.id.in_(key_ids))
    return master.undecryptable({row.id: row.ciphertext for row in conn.execute(query)})


def not_here_reason(master: MasterKey) -> str:
    return f"cannot be decrypted here: the master key in use ({master.source}) does not decrypt it"


def keys_here(conn: Connection, master: MasterKey, listed: list[KeyPublic]) -> list[KeyPublic]:
    """`listed` as this process sees them: keys it cannot decrypt are `unusable`."""
    if not listed:
        return listed
    bad = undecryptable_ids(conn, master, key_ids=[k.id for k in listed])
    if not bad:
        return listed
    why = not_here_reason(master)
    return [
        k.model_copy(update={"state": "unusable", "cooling_reason": why})
        if k.id in bad and k.state not in _OUT_OF_POOL
        else k
        for k in listed
    ]


def key_here(conn: Connection, master: MasterKey, key: KeyPublic) -> KeyPublic:
    return keys_here(conn, master, [key])[0]


def status_here(conn: Connection, master: MasterKey, status: PoolStatus) -> PoolStatus:
    """`status` with the keys that do not decrypt here counted as unusable (with `disabled`)."""
    shown = keys_here(conn, master, status.keys)
    if shown is status.keys:
        return status
    providers = {}
    for provider, counts in status.providers.items():
        states = Counter(k.state for k in shown if k.provider == provider)
        providers[provider] = counts.model_copy(
            update={
                "available": states["available"],
                "busy": states["busy"],
                "cooling": states["cooling"],
                "disabled": states["disabled"] + states["unusable"],
            }
        )
    return PoolStatus(providers=providers, keys=shown)


def _mark(found: list[Candidate], bad: set[int], why: str) -> list[Candidate]:
    return [
        dataclasses.replace(
            c, state="unusable", reason=f"unusable: {why}", free_at=None, frees_by="none"
        )
        if c.id in bad and c.state not in _OUT_OF_POOL
        else c
        for c in found
    ]


def explain_here(
    conn: Connection,
    master: MasterKey,
    *,
    provider: str,
    now: datetime,
    threshold: float,
    prefer: int | None = None,
    input_tokens: int | None = None,
) -> Explanation:
    """`views.explain` as this process sees the pool: a key it cannot decrypt is not eligible."""
    found = candidates(
        conn,
        provider=provider,
        now=now,
        threshold=threshold,
        prefer=prefer,
        input_tokens=input_tokens,
    )
    bad = undecryptable_ids(conn, master, provider=provider)
    found = _mark(found, bad, not_here_reason(master)) if bad else found
    return Explanation(
        chosen=next((c.id for c in found if c.eligible), None),
        candidates=[CandidatePublic(id=c.id, eligible=c.eligible, reason=c.reason) for c in found],
    )


def choose_decryptable(
    conn: Connection,
    master: MasterKey,
    *,
    provider: str,
    now: datetime,
    threshold: float,
    prefer: int | None = None,
) -> tuple[set[int], int | None]:
    """The keys of `provider` that do not decrypt here, and the key acquisition should take
    instead of the pool's usual first choice (None when every key decrypts here: take that).

    Raises MasterKeyError when none of the provider's keys in the pool decrypts here (this
    process is misconfigured: it must not run, and must not tell the others anything), and
    NoKeyAvailable when the keys that do decrypt are all busy or cooling."""
    bad = undecryptable_ids(conn, master, provider=provider)
    if not bad:
        return bad, None
    found = candidates(conn, provider=provider, now=now, threshold=threshold, prefer=prefer)
    pool = [c for c in found if c.state not in _OUT_OF_POOL]
    if pool and all(c.id in bad for c in pool):
        raise _decrypts_none(master, len(pool), f"of provider {provider}")
    found = _mark(found, bad, not_here_reason(master))
    chosen = next((c.id for c in found if c.eligible), None)
    if chosen is None:
        error = exhausted(found, provider=provider, now=now)
        assert error is not None  # nothing is eligible
        raise error
    return bad, chosen


def check_master_key(conn: Connection, master: MasterKey) -> set[int]:
    """For a process about to serve runs: MasterKeyError when the keystore holds keys and this
    process's master key decrypts none of them (it is the wrong key: refuse to start rather than
    fail every run); otherwise the ids of the keys it cannot decrypt (runs here skip them)."""
    tokens = {
        row.id: row.ciphertext for row in conn.execute(select(keys_t.c.id, keys_t.c.ciphertext))
    }
    bad = master.undecryptable(tokens)
    if tokens and len(bad) == len(tokens):
        raise _decrypts_none(master, len(tokens), "in the keystore")
    return bad


def _decrypts_none(master: MasterKey, count: int, where: str) -> MasterKeyError:
    which = "does not decrypt the only key" if count == 1 else f"decrypts none of the {count} keys"
    return MasterKeyError(f"the master key in use {which} {where}; {master.hint}")
