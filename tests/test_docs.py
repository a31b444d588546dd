"""The test names that docs/security.md gives for each limit exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_security_document_exists() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", text)
    files = re.findall(r"`(test_\w+\.py)`", text)
    assert len(named) >= 20
    for file, name in named:
        source = (REPO / "tests" / file).read_text()
        assert re.search(rf"def {name}\(", source), f"{file}::{name} does not exist"
    for file in files:
        assert (REPO / "tests" / file).exists(), f"{file} does not exist"
