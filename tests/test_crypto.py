"""Master key handling, fingerprints and masking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event

from keystore import Keystore, MasterKey, MasterKeyError, fingerprint, mask, open_keystore
from keystore.settings import Settings
from tests.conftest import secret_for


@pytest.mark.parametrize("length", range(0, 120))
def test_mask_never_shows_more_than_a_third(length: int) -> None:
    secret = "".join(chr(ord("a") + i % 26) for i in range(length))
    shown = mask(secret).replace("...", "")
    assert len(shown) <= length // 3
    head, _, tail = mask(secret).partition("...")
    assert len(head) <= 7 and len(tail) <= 4
    assert secret.startswith(head) and secret.endswith(tail)
    if length >= 33:
        assert (len(head), len(tail)) == (7, 4)


def test_fingerprint_is_stable_short_hex() -> None:
    assert fingerprint("abc") == "ba7816bf8f01cfea"
    assert fingerprint("abc") != fingerprint("abd")


def test_multifernet_first_encrypts_all_decrypt() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token_old = MasterKey([old]).encrypt("s3cret")
    both = MasterKey([new, old])
    assert both.decrypt(token_old) == "s3cret"
    assert MasterKey([new]).decrypt(both.encrypt("x")) == "x"
    with pytest.raises(MasterKeyError):
        MasterKey([new]).decrypt(token_old)


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "home" / "master.key"
    first = MasterKey.load(env_value=None, key_file=key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = MasterKey.load(env_value=None, key_file=key_file)
    assert second.decrypt(first.encrypt("x")) == "x"


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    MasterKey.load(env_value=None, key_file=key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        MasterKey.load(env_value=None, key_file=key_file)


def test_malformed_env_key_is_a_clear_error() -> None:
    with pytest.raises(MasterKeyError, match="#2 in KEYRELAY_MASTER_KEY is not a valid Fernet key"):
        MasterKey.load(env_value=f"{Fernet.generate_key().decode()},not-a-key", key_file=Path("/x"))


def test_rotation_reencrypts_every_row_without_downtime(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    ks = open_keystore(settings=settings)
    secrets = [secret_for(str(i)) for i in range(3)]
    for i, secret in enumerate(secrets):
        ks.add_key(name=f"k{i}", provider="openai", secret=secret, max_concurrency=5)
    still_running = open_keystore(settings=settings)  # another process, loaded the old key
    before = still_running.master.key_count
    assert ks.rotate_master_key() == 3
    assert ks.master.key_count == 2 and before == 1
    new_only = MasterKey([settings.master_key_file.read_text().split()[0].encode()])
    with ks.engine.connect() as conn:
        tokens = [r[0] for r in conn.exec_driver_sql("SELECT ciphertext FROM keys ORDER BY id")]
    assert [new_only.decrypt(t) for t in tokens] == secrets
    got = {still_running.acquire(provider="openai", holder="old").secret() for _ in range(3)}
    assert got <= set(secrets)  # reloaded the file, no restart needed
    assert ks.audit_events(type="master_key_rotated")[0].details["rows"] == 3
    ks.close()
    still_running.close()


def test_env_master_key_rotation_reencrypts_under_first(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    url = f"sqlite:///{tmp_path / 'k.db'}"
    ks = open_keystore(url, settings=Settings(home=tmp_path, master_key=old))
    ks.add_key(name="k", provider="openai", secret="sk-proj-abcdefghijklmnop")
    ks.close()
    rotated = open_keystore(url, settings=Settings(home=tmp_path, master_key=f"{new},{old}"))
    rotated.rotate_master_key()
    only_new = Keystore(rotated.engine, MasterKey([new.encode()]))
    assert only_new.acquire(provider="openai", holder="t").secret() == "sk-proj-abcdefghijklmnop"
    rotated.close()


def _stored(ks: Keystore) -> list[str]:
    with ks.engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT ciphertext FROM keys ORDER BY id")]


def test_a_rotation_that_cannot_reencrypt_every_key_changes_none(tmp_path: Path) -> None:
    old, other, new = (Fernet.generate_key() for _ in range(3))
    ks = Keystore(open_keystore(settings=Settings(home=tmp_path)).engine, MasterKey([old]))
    for i in range(2):
        ks.add_key(name=f"k{i}", provider="openai", secret=secret_for(str(i)))
    stranger = Keystore(ks.engine, MasterKey([other]))  # a key stored under another master key
    odd = stranger.add_key(name="odd", provider="openai", secret=secret_for("odd")).id
    before = _stored(ks)
    rotating = Keystore(ks.engine, MasterKey([new, old]))
    with pytest.raises(MasterKeyError, match=rf"key\(s\) {odd} do not decrypt.*nothing was"):
        rotating.rotate_master_key()
    assert _stored(ks) == before
    assert ks.audit_events(type="master_key_rotated") == []


def test_a_rotation_interrupted_midway_leaves_every_key_under_the_old_key(tmp_path: Path) -> None:
    """Killed after some rows were rewritten (here: the third UPDATE raises, as a SIGINT or a
    dropped connection would): the rotation is one transaction, so no row is left under the new
    key and the old key alone still decrypts every one."""
    old, new = Fernet.generate_key(), Fernet.generate_key()
    ks = Keystore(open_keystore(settings=Settings(home=tmp_path)).engine, MasterKey([old]))
    secrets = [secret_for(str(i)) for i in range(5)]
    for i, secret in enumerate(secrets):
        ks.add_key(name=f"k{i}", provider="openai", secret=secret)
    updates = 0

    def dies_on_the_third_update(
        conn: object, cursor: object, statement: str, *args: object
    ) -> None:
        nonlocal updates
        if statement.startswith("UPDATE keys SET ciphertext"):
            updates += 1
            if updates == 3:
                raise KeyboardInterrupt

    event.listen(ks.engine, "before_cursor_execute", dies_on_the_third_update)
    try:
        with pytest.raises(KeyboardInterrupt):
            Keystore(ks.engine, MasterKey([new, old])).rotate_master_key()
    finally:
        event.remove(ks.engine, "before_cursor_execute", dies_on_the_third_update)
    assert updates == 3
    assert [MasterKey([old]).decrypt(t) for t in _stored(ks)] == secrets
