"""Which process holds a SQLite file's lock: named in the lock-wait heartbeat.

SQLite locks with POSIX advisory locks, which Linux lists in ``/proc/locks`` with the
holder's PID and the file's device and inode. A writer holds a write lock on the main
file's lock bytes (rollback journal: from 2**30) or on byte 120 of the ``-shm`` file
(WAL's writer lock). Elsewhere, or when nothing is found, the description is empty.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


def _file_key(path: Path) -> str | None:
    """'MAJ:MIN:INODE' as /proc/locks spells it (major, minor in hex), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def write_lock_holders(path: Path, locks_text: str | None = None) -> list[int]:
    """PIDs, other than ours, holding a write lock on ``path`` or its ``-shm`` file."""
    if locks_text is None:
        try:
            locks_text = PROC_LOCKS.read_text()
        except OSError:
            return []
    keys = {k for k in (_file_key(path), _file_key(path.with_name(path.name + "-shm"))) if k}
    pids = []
    for line in locks_text.splitlines():
        fields = line.split()
        if "->" in fields:  # a request waiting for a lock, not one that is held
            continue
        if len(fields) >= 6 and fields[3] == "WRITE" and fields[5] in keys:
            pid = int(fields[4])
            if pid != os.getpid() and pid not in pids:
                pids.append(pid)
    return pids


def describe_process(pid: int, width: int = 80) -> str:
    """'PID 1234: python3 -m panic_tda run …' (its command line, shortened)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"PID {pid}"
    command = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    if len(command) > width:
        command = command[: width - 1] + "…"
    return f"PID {pid}: {command}" if command else f"PID {pid}"


def lock_holder_text(path: Path) -> str:
    """'held by PID 1234: …' for the processes write-locking ``path``, else ''."""
    pids = write_lock_holders(path)
    return "held by " + "; ".join(describe_process(p) for p in pids) if pids else ""
