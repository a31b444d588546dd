"""Which package may import what: the seams the design keeps (docs/architecture.md,
"Packages"). Lazy imports inside functions and ``TYPE_CHECKING`` imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the sans-I/O core of signaling/ must not import: sockets, files, databases,
# event loops, media. Its I/O implementations live in signaling/adapters/.
IO_MODULES = (
    "asyncio",
    "sqlite3",
    "socket",
    "subprocess",
    "threading",
    "os",
    "redis",
    "aiortc",
    "av",
    "starlette",
    "uvicorn",
    "websockets",
    "httpx",
)
# The lesson logic and its wire types, which the SFU must not see.
LESSON_AND_WIRE = (
    "signaling.protocol",
    "signaling.lesson",
    "signaling.session",
    "signaling.effects",
)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            found.add(module)
            # ``from signaling import protocol`` imports a module, not a name.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_signalling_core_does_no_io() -> None:
    core = [p for p in sorted((REPO / "signaling").glob("*.py"))]
    offenders = [
        f"{path.name} imports {module}"
        for path in core
        for module in imports_of(path)
        if matches(module, IO_MODULES) or matches(module, ("signaling.adapters",))
    ]
    assert core and not offenders, offenders


def test_the_sfu_sees_no_lesson_logic_nor_wire_types() -> None:
    # client.py is a participant (lco publish, the tests): it speaks the protocol.
    sfu = [p for p in sorted((REPO / "media").glob("*.py")) if p.name != "client.py"]
    offenders = [
        f"media/{path.name} imports {module}"
        for path in sfu
        for module in imports_of(path)
        if matches(module, LESSON_AND_WIRE)
    ]
    assert sfu and not offenders, offenders


def test_a_connection_and_the_server_state_do_not_import_each_other() -> None:
    connection = imports_of(REPO / "server" / "connection.py")
    state = imports_of(REPO / "server" / "state.py")
    assert "server.state" not in connection
    assert "server.connection" not in state
