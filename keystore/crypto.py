"""Master key (Fernet / MultiFernet), fingerprints and masking.

The first master key encrypts, all of them decrypt. Keys come from KEYRELAY_MASTER_KEY, from the
0600 file KEYRELAY_MASTER_KEY_FILE names (never created: whoever set the path manages the file),
or from a 0600 file under KEYRELAY_HOME that is created on first use, for an empty keystore only:
when the keystore already holds keys, a missing key file is an error, since a new key would not
decrypt them. The file may hold several keys, one per line; `rotate` writes a new first key and
keeps the previous one for processes that loaded it before the rotation (they reload the file when
a token does not decrypt).

`can_decrypt` tells whether a stored secret decrypts here without decrypting it: a Fernet token
carries an HMAC-SHA256 of its contents under the first half of the key that made it, and a token
whose HMAC one of our keys verifies is one we can decrypt. It costs about 9 us per token and key
(a full `MultiFernet.decrypt` about 18 us, and it would put the plaintext in memory), so the
views can say "cannot be decrypted here" on every listing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from keystore.errors import MasterKeyError
from keystore.private_files import make_private_dir

__all__ = ["MasterKey", "fingerprint", "mask"]

_KEEP_OLD_KEYS = 1  # previous keys kept in the file after a rotation
_TOKEN_MIN_BYTES = 1 + 8 + 16 + 16 + 32  # version, timestamp, IV, one AES block, HMAC


def fingerprint(secret: str) -> str:
    """SHA-256 of the secret, first 16 hex characters: stable, safe to show, unique per secret."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def mask(secret: str) -> str:
    """At most the first 7 and the last 4 characters, never more than a third of the secret."""
    budget = len(secret) // 3
    tail = min(4, budget)
    head = min(7, budget - tail)
    return f"{secret[:head]}...{secret[len(secret) - tail :] if tail else ''}"


def _parse_keys(text: str, *, origin: str) -> list[bytes]:
    keys = [part.strip().encode() for part in text.replace("\n", ",").split(",") if part.strip()]
    if not keys:
        raise MasterKeyError(f"no master key in {origin}")
    for index, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise MasterKeyError(
                f"master key #{index + 1} in {origin} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with `keyrelay master-key generate`)"
            ) from exc
    return keys


class MasterKey:
    """Encrypts and decrypts secrets. Thread-safe; reloads its key file when a token does not
    decrypt (another process may have rotated it)."""

    def __init__(
        self,
        keys: Sequence[bytes],
        *,
        key_file: Path | None = None,
        source: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._key_file = key_file
        self.source = source or (str(key_file) if key_file else "the master key given")
        self._set(list(keys))

    @classmethod
    def load(
        cls,
        *,
        env_value: str | None,
        key_file: Path,
        file_is_explicit: bool = False,
        keys_exist: Callable[[], bool] = lambda: False,
    ) -> MasterKey:
        """From KEYRELAY_MASTER_KEY (`env_value`), else from `key_file`. A missing `key_file` is
        created only when it is the default one and `keys_exist()` says the keystore is empty."""
        if env_value:
            if file_is_explicit:
                raise MasterKeyError(
                    "KEYRELAY_MASTER_KEY and KEYRELAY_MASTER_KEY_FILE are both set; set one of them"
                )
            keys = _parse_keys(env_value, origin="KEYRELAY_MASTER_KEY")
            return cls(keys, source="KEYRELAY_MASTER_KEY")
        if not key_file.exists():
            if file_is_explicit:
                raise MasterKeyError(
                    f"KEYRELAY_MASTER_KEY_FILE names {key_file}, which does not exist; fix the "
                    f"path, or create it: `(umask 077 && keyrelay master-key generate > "
                    f"{key_file})`"
                )
            if keys_exist():
                raise MasterKeyError(
                    f"keys exist but {key_file} is missing; restore it or set KEYRELAY_MASTER_KEY "
                    "(a new master key would not decrypt them)"
                )
        source = f"KEYRELAY_MASTER_KEY_FILE ({key_file})" if file_is_explicit else str(key_file)
        return cls(_read_or_create(key_file), key_file=key_file, source=source)

    @staticmethod
    def generate() -> str:
        return Fernet.generate_key().decode()

    @property
    def from_environment(self) -> bool:
        return self._key_file is None

    @property
    def key_count(self) -> int:
        return len(self._keys)

    @property
    def hint(self) -> str:
        """What to check when secrets do not decrypt here."""
        if self._key_file is None and self.source == "KEYRELAY_MASTER_KEY":
            return "is KEYRELAY_MASTER_KEY right?"
        if self._key_file is None:
            return "is the master key right?"
        return (
            f"is {self._key_file} the key file they were stored under? (KEYRELAY_MASTER_KEY or "
            "KEYRELAY_MASTER_KEY_FILE can name the right one)"
        )

    def _set(self, keys: list[bytes]) -> None:
        self._keys = keys
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._signing_keys = [base64.urlsafe_b64decode(k)[:16] for k in keys]

    def _verifies(self, token: str) -> bool:
        try:
            data = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return False
        if len(data) < _TOKEN_MIN_BYTES or data[0] != 0x80:
            return False
        body, mac = data[:-32], data[-32:]
        return any(
            hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac)
            for key in self._signing_keys
        )

    def can_decrypt(self, token: str) -> bool:
        """Whether `token` decrypts with these keys (reloading the key file once, as `decrypt`
        does), without decrypting it."""
        return not self.undecryptable({0: token})

    def undecryptable(self, tokens: Mapping[int, str]) -> set[int]:
        """The ids of the tokens that do not decrypt with these keys (see `can_decrypt`)."""
        failed = {i for i, token in tokens.items() if not self._verifies(token)}
        if failed and self._reload():
            failed = {i for i in failed if not self._verifies(tokens[i])}
        return failed

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            if self._reload():
                try:
                    return self._fernet.decrypt(token.encode()).decode()
                except InvalidToken:
                    pass
            raise MasterKeyError("secret does not decrypt with any master key") from None

    def reencrypt(self, token: str) -> str:
        """The same secret under the first master key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise MasterKeyError("secret does not decrypt with any master key") from None

    def rotate(self) -> None:
        """Put a fresh key first (file-backed keys only); keep the previous one for decryption."""
        if self._key_file is None:
            raise MasterKeyError(
                "the master key comes from KEYRELAY_MASTER_KEY: put a new key first in that "
                "variable "
                "(keep the old ones after it), restart, then run the rotation to re-encrypt"
            )
        with self._lock:
            if not self._key_file.exists():  # a new file would drop the key the secrets are under
                raise MasterKeyError(f"{self._key_file} is missing; restore it before rotating")
            current = _read_or_create(self._key_file)
            keys = [Fernet.generate_key(), *current[:_KEEP_OLD_KEYS]]
            _write_key_file(self._key_file, keys)
            self._set(keys)

    def _reload(self) -> bool:
        if self._key_file is None or not self._key_file.exists():
            return False
        with self._lock:
            keys = _parse_keys(self._key_file.read_text(), origin=str(self._key_file))
            if keys == self._keys:
                return False
            self._set(keys)
            return True


def _read_or_create(key_file: Path) -> list[bytes]:
    if key_file.exists():
        _check_permissions(key_file)
        return _parse_keys(key_file.read_text(), origin=str(key_file))
    make_private_dir(key_file.parent)
    key = Fernet.generate_key()
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _parse_keys(key_file.read_text(), origin=str(key_file))
    with os.fdopen(fd, "w") as handle:
        handle.write(key.decode() + "\n")
    return [key]


def _write_key_file(key_file: Path, keys: Sequence[bytes]) -> None:
    tmp = key_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(k.decode() + "\n" for k in keys))
    os.replace(tmp, key_file)


def _check_permissions(key_file: Path) -> None:
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise MasterKeyError(
            f"{key_file} is readable by others (mode {mode:o}); run `chmod 600 {key_file}`"
        )
