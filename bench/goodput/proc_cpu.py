"""CPU seconds of a process and everything it started, from /proc (Linux; psutil is not a
dependency). Children that already exited count once their parent has reaped them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["tree_cpu_s"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_s(root: int) -> float:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (here 11-14: two fewer before them).
        total += sum(int(value) for value in fields[11:15])
        pending.extend(children.get(pid, []))
    return total / _TICKS
