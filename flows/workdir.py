"""Where a `claude-code` run's agent works, and how that directory follows a deferred run.

A run given a `workdir` uses it as it is; if it is missing where the run resumes, the run fails
naming the path and the machine (keyrelay never invents a user's repository). A run without one
gets `KEYRELAY_RUNS_DIR/<run id>` (outside KEYRELAY_HOME, which the sandbox hides). When such a
run defers, the directory is snapshotted into the keystore (a gzipped tar, capped by
RotationConfig.workdir_snapshot_max_mb; over the cap the deferral fails rather than resume later
in an empty directory), and a worker that picks the run up without the directory restores it.
"""

from __future__ import annotations

import io
import platform
import tarfile
from pathlib import Path

from flows.errors import RunFailed
from flows.job import AgentJob, workdir_missing
from keystore import Keystore, Settings, utcnow
from keystore.snapshots import Snapshot

__all__ = ["default_workdir", "prepare_workdir", "restore", "snapshot", "snapshot_for_deferral"]


def default_workdir(run_id: str) -> Path:
    return Settings().runs_dir / run_id


def snapshot(folder: Path, *, max_bytes: int) -> Snapshot:
    """The directory as a gzipped tar (symlinks kept as links, never followed); RunFailed past
    `max_bytes` of files."""
    total, files = 0, 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            files += 1
            if total > max_bytes:
                raise RunFailed(
                    f"the run's working directory {folder} holds more than "
                    f"{max_bytes / 2**20:g} MB (workdir_snapshot_max_mb), too much to keep for "
                    "its resumption on another worker; give the run a `workdir` of your own, or "
                    "raise workdir_snapshot_max_mb"
                )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=".", recursive=True)
    return Snapshot(buffer.getvalue(), total, files, utcnow())


def restore(saved: Snapshot, folder: Path) -> None:
    """Unpack into `folder` (created 0700); the `data` filter refuses absolute paths, `..`,
    links out of the folder and device files, whatever the archive holds."""
    folder.mkdir(parents=True, mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(saved.archive), mode="r:gz") as archive:
        archive.extractall(folder, filter="data")


def prepare_workdir(store: Keystore, run_id: str, job: AgentJob, *, resuming: bool) -> Path:
    """The directory this execution of the run works in, ready to use."""
    if job.workdir is not None:
        if (problem := workdir_missing(job.workdir)) is not None:
            raise RunFailed(f"workdir: {problem}")
        return Path(job.workdir).expanduser().resolve()
    folder = default_workdir(run_id)
    if folder.is_dir():
        return folder.resolve()
    saved = store.load_snapshot(run_id) if resuming else None
    if saved is not None:
        restore(saved, folder)
    elif resuming:
        raise RunFailed(
            f"the run's working directory {folder} is not on {platform.node() or 'this machine'} "
            "and no snapshot of it was kept; it will not resume in an empty directory"
        )
    else:
        folder.mkdir(parents=True, mode=0o700)
    return folder.resolve()


def snapshot_for_deferral(store: Keystore, run_id: str, job: AgentJob) -> None:
    """Before a run defers: keep its default working directory for whoever resumes it."""
    folder = default_workdir(run_id)
    if job.workdir is not None or not folder.is_dir():
        return
    max_bytes = int(store.config().workdir_snapshot_max_mb * 2**20)
    store.save_snapshot(run_id, snapshot(folder, max_bytes=max_bytes))
