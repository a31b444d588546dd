"""The JSON Schema of the signalling protocol, generated from the pydantic models.

``docs/protocol.schema.json`` is this module's output, committed so that clients in
other languages can be written (and checked) against it; a test fails when it is
out of date. Regenerate it with ``python -m signaling.protocol_schema``.
Server messages are described as they are sent (every key present, null or not);
client messages as the server accepts them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from . import protocol as p

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.schema.json"

_server_adapter: TypeAdapter[Any] = TypeAdapter(
    Annotated[p.ServerMessage, Field(discriminator="type")]
)
_client_adapter: TypeAdapter[Any] = TypeAdapter(p.ClientMessage)


def protocol_schema() -> dict[str, Any]:
    """The schema bundle: ``$defs.ServerMessage`` and ``$defs.ClientMessage``."""
    by_key, definitions = TypeAdapter.json_schemas(
        [
            ("server", "serialization", _server_adapter),
            ("client", "validation", _client_adapter),
        ],
        ref_template="#/$defs/{model}",
    )
    defs = dict(definitions.get("$defs", {}))
    defs["ServerMessage"] = by_key[("server", "serialization")]
    defs["ClientMessage"] = client = by_key[("client", "validation")]
    # ``v`` and ``type`` have defaults in the models (for building messages in
    # Python), but parse_client_message refuses a message without them.
    for ref in client["discriminator"]["mapping"].values():
        model = defs[ref.rsplit("/", 1)[1]]
        model["required"] = [
            "v",
            "type",
            *(f for f in model.get("required", []) if f not in ("v", "type")),
        ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"LCO Classroom signalling protocol, version {p.PROTOCOL_VERSION}",
        "description": (
            "Every WebSocket message is one JSON object. Validate what the server sends "
            "against #/$defs/ServerMessage and what a client sends against "
            "#/$defs/ClientMessage. Generated from signaling/protocol.py; docs/protocol.md "
            "describes the same messages."
        ),
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    """The schema as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema to ``docs/protocol.schema.json`` (or the path given)."""
    arguments = sys.argv[1:] if argv is None else argv
    target = Path(arguments[0]) if arguments else SCHEMA_PATH
    target.write_text(render())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
