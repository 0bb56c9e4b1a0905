"""Durability for atomic saves: flush a file's or a folder's entry to disk before and after os.replace."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | os.PathLike | Path) -> None:
    """fsync a file or a directory (so a rename inside it survives a crash); a no-op where the OS
    cannot open or sync it (a directory on Windows, some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
