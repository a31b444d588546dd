"""Dependencies point one way: the product never imports ``benchmarks/``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("server", "signaling", "media", "web_client")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_no_product_module_imports_the_benchmarks() -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for package in PRODUCT
        for path in sorted((REPO / package).rglob("*.py"))
        for module in _imported_modules(path)
        if module == "benchmarks" or module.startswith("benchmarks.")
    ]
    assert not offenders, offenders


def test_lco_bench_is_found_through_an_entry_point() -> None:
    # `lco --help` lists `bench` without importing the benchmarks package.
    code = (
        "import sys, server.cli as c; c.build_parser(); "
        "print('bench' in c.plugin_commands(), 'benchmarks' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "False"]
