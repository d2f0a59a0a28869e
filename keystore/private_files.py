"""Files only their owner may read: the keystore (ciphertexts, and conversations in plain text in
its checkpoints), its lock files, and the master key file.

Files keyrelay creates are 0600 and directories 0700, whatever the umask. An existing keystore
file that group or others may read is tightened to 0600 with a warning rather than refused:
keyrelay itself created every keystore 0644 before this rule, so refusing would stop every
existing installation, while tightening only takes back what keyrelay gave away. (The master key
file, which keyrelay always created 0600, is refused instead when it is readable by others: see
crypto.py.) Existing directories are left as they are: the files in them are what is protected,
and KEYRELAY_HOME may be a directory someone set up on purpose."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["create_private_file", "make_private_dir", "open_private_lock", "tighten"]

log = logging.getLogger(__name__)


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents 0700; an existing directory is left alone."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first: theirs is as private as ours
            continue
        os.chmod(directory, 0o700)  # a umask cannot widen it, but an odd one may have narrowed it


def create_private_file(path: Path) -> bool:
    """Create `path` empty and 0600; False when it already existed (it is left untouched)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def open_private_lock(path: Path | str) -> int:
    """A descriptor of the lock file `path` (for flock), created 0600 if it is missing."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def tighten(path: Path) -> None:
    """Take group and other permissions off an existing file, saying so."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except OSError as exc:  # not ours to change (another owner, a read-only mount)
        log.warning(
            "%s is readable by group or others (mode %o) and could not be changed (%s); "
            "run `chmod 600 %s`",
            path,
            mode,
            exc.strerror,
            path,
        )
        return
    log.warning(
        "%s was readable by group or others (mode %o); changed to %o", path, mode, mode & 0o700
    )
