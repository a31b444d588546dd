"""Files only the server's user may read: the data directory, its databases and keys.

The records hold names, chat and attendance of children; the keys sign join links.
Directories are created 0700 and files 0600 whatever the umask. SQLite creates a
database's ``-wal`` and ``-shm`` files with the database file's own mode, so a
database created here 0600 keeps its companions 0600 too.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) with the directory itself 0700."""
    if not path.exists():
        path.mkdir(parents=True, mode=DIRECTORY_MODE, exist_ok=True)
        # mkdir's mode is filtered by the umask; be exact.
        path.chmod(DIRECTORY_MODE)


def create_private_file(path: Path) -> int:
    """Create ``path`` exclusively, mode 0600; return the open descriptor for writing."""
    private_directory(path.parent)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def open_database(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating 0600 if absent) a SQLite database in WAL mode with full syncs.

    Autocommit: each statement is its own transaction, durable when it returns.
    """
    private_directory(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def tighten(directory: Path) -> list[str]:
    """Make an existing ``directory`` 0700 and every file in it 0600.

    Returns what was changed (paths relative to ``directory``, ``.`` for itself),
    for the caller to log; names only, never contents.
    """
    changed: list[str] = []
    if not directory.is_dir():
        return changed
    if stat.S_IMODE(directory.stat().st_mode) & ~DIRECTORY_MODE:
        directory.chmod(DIRECTORY_MODE)
        changed.append(".")
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            path = Path(root) / name
            if stat.S_IMODE(path.lstat().st_mode) & ~DIRECTORY_MODE:
                path.chmod(DIRECTORY_MODE)
                changed.append(str(path.relative_to(directory)))
        for name in files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and stat.S_IMODE(mode) & ~FILE_MODE:
                path.chmod(FILE_MODE)
                changed.append(str(path.relative_to(directory)))
    return sorted(changed)
