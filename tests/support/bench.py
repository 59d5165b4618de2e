"""Helpers for the tests that run the benchmark's tools (bench/run.py, bench/compare.py):
finding the binaries they need and the processes they start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["which", "processes_with"]


def which(name: str) -> str | None:
    """``shutil.which``, also looking in the sbin directories (dovecot, haproxy, nginx
    live there and are not on a non-root PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def processes_with(marker: str) -> list[str]:
    """``"pid: command line"`` of every live process (but this one) whose command line
    mentions ``marker`` (the bench's servers run in /tmp/bench-* directories)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{entry}: {cmd.strip()}")
    return found
