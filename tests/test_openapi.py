"""Every HTTP API operation, driven from its OpenAPI document by schemathesis.

Valid and invalid inputs are generated for each operation (a fixed seed, a bounded
number of examples, so the run is deterministic and fast) and sent to a real
``lco serve``: no answer may be a 500, every answer must be one the document
lists, with the content type and shape it gives; and the server must log no
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from signaling.permissions import Role

from .conftest import ADMIN_KEY, RunningServer, start_server, stop_server

EXAMPLES_PER_OPERATION_AND_MODE = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def seeded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with a community, schools, an endpoint and a lesson for ids to hit."""
    running = start_server(tmp_path_factory.mktemp("openapi"))
    for method, path, body in (
        ("POST", "/api/communities", {"id": "valley", "name": "Valley"}),
        ("POST", "/api/communities/valley/schools", {"id": "north", "name": "North"}),
        ("POST", "/api/schools/north/endpoints", {"name": "Room 4", "headcount": 24}),
        (
            "POST",
            "/api/lessons",
            {
                "id": "maths-7",
                "community_id": "valley",
                "title": "Fractions",
                "host_teacher": "Ms Rivera",
                "host_school": "north",
                "starts_at": "2026-12-01T09:00:00Z",
                "ends_at": "2026-12-01T10:00:00Z",
            },
        ),
    ):
        assert running.api(method, path, json=body).status_code == 201
    yield running
    stop_server(running)
    assert "Traceback" not in running.log()


def operations(server: RunningServer) -> list[Any]:
    document = httpx.get(f"{server.http}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("credential", ["admin", "teacher"])
def test_no_input_makes_the_api_answer_500_or_off_its_document(
    seeded_server: RunningServer, credential: str
) -> None:
    key = (
        ADMIN_KEY
        if credential == "admin"
        else seeded_server.token("Ms Rivera", Role.TEACHER, lesson="maths-7")
    )
    failures: list[str] = []
    found = operations(seeded_server)
    assert len(found) >= 15
    for operation in found:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(mode, headers={"Authorization": f"Bearer {key}"})

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Any) -> None:
                case.call_and_validate(base_url=seeded_server.http, checks=CHECKS)

            try:
                call()
            except Unsatisfiable:
                # Only string path parameters and no body: no input is invalid.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collect every operation's failure, then report
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
