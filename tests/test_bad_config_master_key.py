"""A wrong master key is this process's problem, never the pool's.

Two `Keystore`s on one database with different master keys stand for two worker processes (each
process has exactly one `MasterKey`); tests/test_bad_config_cli.py runs the same through the real
console script."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from keystore import (
    Keystore,
    ManualClock,
    MasterKey,
    MasterKeyError,
    NoKeyAvailable,
    RateLimitSignal,
    open_keystore,
)
from keystore.db import create_keystore_engine
from keystore.keys import keys_t
from keystore.settings import Settings
from tests.conftest import T0, secret_for

NOT_HERE = (
    "cannot be decrypted here: the master key in use (KEYRELAY_MASTER_KEY) does not decrypt it"
)


def _open(store_url: str, key: str, clock: ManualClock) -> Keystore:
    """A keystore as a process whose KEYRELAY_MASTER_KEY is `key` opens it."""
    master = MasterKey([key.encode()], source="KEYRELAY_MASTER_KEY")
    return Keystore(create_keystore_engine(store_url), master, clock=clock)


def _marks(store: Keystore) -> list[tuple[int, str | None, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(keys_t.c.id, keys_t.c.unusable_reason, keys_t.c.unusable_kind).order_by(
                keys_t.c.id
            )
        )
        return [tuple(r) for r in rows]


@pytest.fixture
def right_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def wrong_key() -> str:
    return Fernet.generate_key().decode()


def test_a_wrong_master_key_refuses_and_marks_nothing(
    store_url: str, clock: ManualClock, right_key: str, wrong_key: str
) -> None:
    good = _open(store_url, right_key, clock)
    secrets = {
        good.add_key(name=f"k{i}", provider="anthropic", secret=secret).id: secret
        for i, secret in enumerate(secret_for(f"k{i}") for i in range(3))
    }
    bad = _open(store_url, wrong_key, clock)

    for _ in range(2):  # the first attempt and every later one
        with pytest.raises(MasterKeyError) as refused:
            bad.acquire(provider="anthropic", holder="misconfigured-worker")
        assert str(refused.value) == (
            "the master key in use decrypts none of the 3 keys of provider anthropic; "
            "is KEYRELAY_MASTER_KEY right?"
        )

    assert _marks(good) == [(i, None, None) for i in secrets]
    assert good.audit_events(type="key_unusable") == []
    assert [k.state for k in good.list_keys()] == ["available"] * 3
    assert all(k.active_leases == 0 and k.uses == 0 for k in good.list_keys())
    held = [good.acquire(provider="anthropic", holder=f"worker-{i}") for i in range(3)]
    assert {lease.key_id: lease.secret() for lease in held} == secrets
    good.close()
    bad.close()


def test_the_wrong_process_sees_cannot_be_decrypted_here(
    store_url: str, clock: ManualClock, right_key: str, wrong_key: str
) -> None:
    good = _open(store_url, right_key, clock)
    key = good.add_key(name="only", provider="openai", secret=secret_for("only"))
    bad = _open(store_url, wrong_key, clock)

    seen = bad.get_key(key.id)
    assert (seen.state, seen.cooling_reason) == ("unusable", NOT_HERE)
    assert [(k.state, k.cooling_reason) for k in bad.list_keys()] == [("unusable", NOT_HERE)]
    explained = bad.explain("openai")
    assert explained.chosen is None
    assert [(c.id, c.eligible, c.reason) for c in explained.candidates] == [
        (key.id, False, f"unusable: {NOT_HERE}")
    ]
    counts = bad.status().providers["openai"]
    assert (counts.total, counts.available, counts.disabled) == (1, 0, 1)
    with pytest.raises(MasterKeyError, match="does not decrypt the only key of provider openai"):
        bad.acquire(provider="openai", holder="t")

    # The right process still says "available" and the views never touched the row.
    assert good.get_key(key.id).state == "available"
    assert good.explain("openai").chosen == key.id
    assert good.status().providers["openai"].available == 1
    good.close()
    bad.close()


def test_a_cooling_pool_is_refused_at_once_not_waited_for(
    store_url: str, clock: ManualClock, right_key: str, wrong_key: str
) -> None:
    # Were the keys' reset waited for first, the run would defer for hours and fail only then.
    good = _open(store_url, right_key, clock)
    key = good.add_key(name="k", provider="anthropic", secret=secret_for("k")).id
    good.mark_limited(key, RateLimitSignal("rate_limit", T0 + timedelta(hours=2), True, "hdr"))
    bad = _open(store_url, wrong_key, clock)
    with pytest.raises(MasterKeyError, match="does not decrypt the only key"):
        bad.acquire(provider="anthropic", holder="t")
    with pytest.raises(NoKeyAvailable):  # the right process waits for the reset, as before
        good.acquire(provider="anthropic", holder="t")
    good.close()
    bad.close()


def test_a_mixed_pool_skips_what_does_not_decrypt_here_only(
    store_url: str, clock: ManualClock, right_key: str, wrong_key: str
) -> None:
    # Key `theirs` was stored by a process with another master key (a copied home, a file that
    # was regenerated): here it is skipped, there it is leased, and nobody marks anything.
    mine_store = _open(store_url, right_key, clock)
    their_store = _open(store_url, wrong_key, clock)
    theirs = their_store.add_key(
        name="theirs", provider="openai", secret=secret_for("t"), priority=1, max_concurrency=5
    ).id
    mine = mine_store.add_key(name="mine", provider="openai", secret=secret_for("m")).id

    explained = mine_store.explain("openai")
    assert explained.chosen == mine
    assert [(c.id, c.eligible) for c in explained.candidates] == [(theirs, False), (mine, True)]
    lease = mine_store.acquire(provider="openai", holder="a")
    assert lease.key_id == mine
    with pytest.raises(NoKeyAvailable) as busy:  # `mine` is busy; `theirs` is not an option here
        mine_store.acquire(provider="openai", holder="b")
    assert busy.value.reason == "all_busy"
    assert f"key {theirs} (theirs): unusable: cannot be decrypted here" in str(busy.value)
    mine_store.release(lease)

    assert their_store.acquire(provider="openai", holder="c").key_id == theirs
    assert _marks(mine_store) == [(theirs, None, None), (mine, None, None)]
    # The skipped key gave out no lease and counted no use in the process that skipped it.
    assert mine_store.get_key(theirs).uses == 1  # the one `their_store` just took
    mine_store.close()
    their_store.close()


def test_a_key_found_undecryptable_during_acquire_is_skipped(
    store_url: str, clock: ManualClock, right_key: str, wrong_key: str
) -> None:
    # The process looked at the provider's keys before another process added one it cannot
    # decrypt at a better priority: the lease it is handed is given back, the next key taken.
    mine_store = _open(store_url, right_key, clock)
    mine = mine_store.add_key(name="mine", provider="openai", secret=secret_for("m")).id
    mine_store.release(mine_store.acquire(provider="openai", holder="warm-up"))
    their_store = _open(store_url, wrong_key, clock)
    theirs = their_store.add_key(
        name="theirs", provider="openai", secret=secret_for("t"), priority=1
    ).id
    lease = mine_store.acquire(provider="openai", holder="a")
    assert lease.key_id == mine
    assert their_store.get_key(theirs).active_leases == 0
    assert _marks(mine_store) == [(mine, None, None), (theirs, None, None)]
    assert their_store.acquire(provider="openai", holder="b").key_id == theirs
    mine_store.close()
    their_store.close()


def test_a_master_key_file_in_use_names_the_file_in_the_hint(
    tmp_path: Path, right_key: str
) -> None:
    url = f"sqlite:///{tmp_path / 'keystore.db'}"
    writer = open_keystore(url, settings=Settings(home=tmp_path / "a", master_key=right_key))
    writer.add_key(name="k", provider="openai", secret=secret_for("k"))
    key_file = tmp_path / "b" / "master.key"  # a key file, but not the one the key is under
    key_file.parent.mkdir()
    key_file.write_text(Fernet.generate_key().decode() + "\n")
    key_file.chmod(0o600)
    reader = open_keystore(url, settings=Settings(home=tmp_path / "b"))
    with pytest.raises(MasterKeyError) as refused:
        reader.acquire(provider="openai", holder="t")
    assert str(refused.value) == (
        f"the master key in use does not decrypt the only key of provider openai; is {key_file} "
        "the key file they were stored under? (KEYRELAY_MASTER_KEY or KEYRELAY_MASTER_KEY_FILE "
        "can name the right one)"
    )
    writer.close()
    reader.close()


def test_the_decrypt_check_agrees_with_decrypt(right_key: str) -> None:
    # can_decrypt verifies the token's HMAC instead of decrypting: it must say yes exactly when
    # decrypt would succeed, for the right key, an old key kept second, and damaged tokens.
    master = MasterKey([right_key.encode()])
    other = MasterKey([Fernet.generate_key()])
    with_old_key = MasterKey([Fernet.generate_key(), right_key.encode()])
    token = master.encrypt("sk-ant-secret")
    flipped = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    candidates = ["", "not base64 !", token, token[:-8], flipped, "gAAAA" + token[5:40]]
    candidates.append(other.encrypt("sk-ant-other"))
    for keys in (master, other, with_old_key):
        for candidate in candidates:
            try:
                keys.decrypt(candidate)
                decrypts = True
            except MasterKeyError:
                decrypts = False
            assert keys.can_decrypt(candidate) is decrypts, (candidate, keys.source)
    assert with_old_key.undecryptable({1: token, 2: candidates[-1]}) == {2}
