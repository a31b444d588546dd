"""The OpenAPI 3.1 document of the HTTP API, built from the operations and their models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from .api import Api
from .api_common import MAX_BODY_BYTES

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what is wrong, naming the field"}},
    "required": ["error"],
}


def openapi_document(api: Api, version: str) -> dict[str, Any]:
    """Describe every operation of ``api``."""
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }

    paths: dict[str, dict[str, Any]] = {}
    for op in api.operations():
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        if op.csv:
            parameters.append(
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
                }
            )
        if op.path == "/api/lessons" and op.method == "GET":
            parameters.append(
                {
                    "name": "community",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                }
            )
        if op.path.endswith("/links"):
            parameters.append(
                {
                    "name": "qr",
                    "in": "query",
                    "required": False,
                    "description": "svg: each link also gets its QR code (qr_svg, a data: URL)",
                    "schema": {"type": "string", "enum": ["svg"]},
                }
            )
        if op.response is not None:
            schema: dict[str, Any] = ref(op.response)
            if op.many:
                schema = {"type": "array", "items": schema}
            content: dict[str, Any] = {"application/json": {"schema": schema}}
        elif op.csv:
            content = {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
            }
        else:
            content = {"application/json": {"schema": {"type": "object"}}}
        slug = re.sub(r"[^a-z]+", "_", op.path.lower()).strip("_")
        operation: dict[str, Any] = {
            "summary": op.summary,
            "description": f"Authorisation: {op.auth}.",
            "operationId": f"{op.method.lower()}_{slug}",
            # The console's cookie session is the admin key's stand-in.
            "security": [{"bearer": []}, {"console_session": []}],
            "responses": {
                str(op.status): {"description": "success", "content": content},
                "401": error("no credentials, or credentials refused"),
                "403": error("these credentials may not do this"),
                "404": error("no such community, school, endpoint or lesson"),
                "413": error(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB"),
            },
        }
        if "{lesson_id}" in op.path:
            operation["responses"]["422"] = error(
                "the lesson id in the path is not one a lesson can have, or (links) a name "
                "the lesson gives cannot be carried by a join link"
            )
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body)}},
            }
            operation["responses"]["400"] = error("the body is not a JSON object")
            operation["responses"]["409"] = error("it already exists, or the lesson has ended")
            operation["responses"]["422"] = error("a field is missing, unknown or invalid")
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LCO Classroom",
            "version": version,
            "description": "Lessons across schools: communities, schools, classroom endpoints, "
            "lessons, join links and attendance. Send `Authorization: Bearer <admin key>` or, "
            "for one lesson's routes, a teacher's join token for that lesson; the web console "
            "uses a cookie session instead of the admin key.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "console_session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "lco_session",
                    "description": "The web console's session (POST /console/session with "
                    "the admin key); requests that change state also send X-CSRF-Token.",
                },
            },
        },
    }
