"""No secret, admin key or token in any log of the whole test run.

Every server a test starts registers its log here (standard error: its logs;
standard output holds what the user is shown, such as the demo links) and the
secrets it holds; each log is read when its server stops (some live in temporary
directories) and again at the end for those still open, together with the log
records of the test process itself. ``pytest_sessionfinish`` fails the run on any
finding (``tests/conftest.py``).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The shape of a join token (a JWT: three base64url parts, two JSON objects).
TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")


@dataclass
class LogCheck:
    """The logs of a run and the secrets none of them may show."""

    secrets: dict[str, str] = field(default_factory=dict)  # value -> what it is
    logs: dict[Path, bool] = field(default_factory=dict)  # path -> read already
    by_process: dict[int, Path] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def hide(self, value: str, what: str) -> None:
        """``value`` must appear in no log."""
        if value:
            self.secrets[value] = what

    def watch(self, path: Path, process: subprocess.Popen[bytes] | None = None) -> None:
        """``path`` is a log to read (when ``process`` stops, and at the end)."""
        self.logs[path] = False
        if process is not None:
            self.by_process[process.pid] = path

    def stopped(self, process: subprocess.Popen[bytes]) -> None:
        """Read the log of a server that stopped, before its directory goes."""
        path = self.by_process.pop(process.pid, None)
        if path is not None:
            self.read(path)

    def read(self, path: Path) -> None:
        """Look for secrets and tokens in one log."""
        self.logs[path] = True
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        self.findings += scan(text, self.secrets, str(path))

    def finish(self) -> list[str]:
        """Read every log not read yet; all findings of the run."""
        for path, done in list(self.logs.items()):
            if not done:
                self.read(path)
        return self.findings

    @property
    def read_count(self) -> int:
        """How many logs were read (a check that read nothing would prove nothing)."""
        return sum(self.logs.values())


def scan(text: str, secrets: dict[str, str], where: str) -> list[str]:
    """What in ``text`` must not be there: each secret by name, and tokens."""
    found = [
        f"{where}: {what} appears in the log" for value, what in secrets.items() if value in text
    ]
    for match in TOKEN.finditer(text):
        found.append(f"{where}: a token appears in the log ({match.group()[:24]}...)")
        break
    return found
