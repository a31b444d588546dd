"""The data directory: records, names and keys are readable by the server's user only."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import SECRET, lco, start_server, stop_server


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default: without care, new files would be 0644 and directories 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(directory: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        found[str(path.relative_to(directory))] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_a_new_data_directory_is_private(tmp_path: Path, permissive_umask: None) -> None:
    server = start_server(tmp_path)
    try:
        found = modes(server.data_dir)
    finally:
        stop_server(server)
    # While the server runs, SQLite's -wal and -shm files exist beside each database.
    for name in ("lco.sqlite3", "catalogue.sqlite3"):
        assert {name, f"{name}-wal", f"{name}-shm"} <= set(found)
    assert found.pop(".") == 0o700
    assert found == dict.fromkeys(found, 0o600)


def test_lco_token_creates_the_directory_and_key_private(
    tmp_path: Path, permissive_umask: None
) -> None:
    data_dir = tmp_path / "fresh"
    subprocess.run(
        [
            *lco("token", "--lesson", "l", "--name", "n"),
            *("--role", "student", "--data-dir", str(data_dir)),
        ],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "LCO_SECRET"},
    )
    assert modes(data_dir) == {".": 0o700, "secret.key": 0o600}


def test_an_existing_open_directory_is_tightened_at_start_and_said_so(
    tmp_path: Path, permissive_umask: None
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    key = "k" * 48
    (data_dir / "webhook.key").write_text(key + "\n")
    with sqlite3.connect(data_dir / "lco.sqlite3") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE old (x)")
    assert stat.S_IMODE((data_dir / "webhook.key").stat().st_mode) == 0o644
    server = start_server(tmp_path)
    try:
        found = modes(data_dir)
        log = server.log()
    finally:
        stop_server(server)
    assert found.pop(".") == 0o700
    assert found == dict.fromkeys(found, 0o600) and "webhook.key" in found
    assert "tightened" in log and "webhook.key" in log
    assert key not in log and SECRET not in log
