"""What a result was measured on and with: machine, kernel, versions, commit.

Every results file carries this, so that a figure in ``docs/benchmarks.md`` names
the machine, the software and the code it came from.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from . import procstat
from .janus import JANUS_BINARY

PACKAGES = ("aiortc", "aioice", "pylibsrtp", "av", "uvloop", "uvicorn", "starlette")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def janus_version() -> str | None:
    """``janus --version``'s version line, if Janus is installed."""
    binary = shutil.which("janus") or shutil.which(JANUS_BINARY)
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Janus version:"):
            return line.split(":", 1)[1].strip()
    return None


def openssl_version() -> str | None:
    """The OpenSSL that aiortc's DTLS runs on (through pyOpenSSL)."""
    try:
        from OpenSSL import SSL

        return bytes(SSL.SSLeay_version(SSL.SSLEAY_VERSION)).decode()
    except Exception:
        return None


# What "the server's code" is, for whether it differs from its commit.
SERVER_PATHS = ("server", "media", "signaling", "web_client", "pyproject.toml")


def git_state(directory: Path, paths: tuple[str, ...] = ()) -> dict[str, Any]:
    """The commit checked out in ``directory`` and whether tracked files (under
    ``paths``, if given) differ from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return {
        "directory": str(directory),
        "commit": commit,
        "dirty": bool(changes) if changes is not None else None,
    }


def describe(server_dir: Path, load_dir: Path) -> dict[str, Any]:
    """The environment of a run: machine, kernel, CPU, versions, commits."""
    return {
        "machine": procstat.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in PACKAGES},
        "openssl": openssl_version(),
        "janus": janus_version(),
        "server_source": git_state(server_dir, SERVER_PATHS),
        "load_source": git_state(load_dir),
        # Filled in from what the load processes report once DTLS is up.
        "srtp_profiles": {},
    }
