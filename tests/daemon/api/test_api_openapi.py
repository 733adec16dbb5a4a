"""docs/api/openapi.json is the schema the code generates (every router the daemon mounts)."""

from __future__ import annotations

import json

from daemon.api.openapi import SCHEMA_FILE, schema_text


def test_the_checked_in_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "docs/api/openapi.json is stale: regenerate it with `kronos-stream api-schema` "
        "(python -m daemon.api.openapi) and commit it"
    )


def test_every_route_declares_its_errors_as_json_with_a_message() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["message"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "401", "429", "503"} <= codes and "422" not in codes, (path, method)
            assert {"HTTPBearer", "APIKeyHeader"} == {k for s in operation["security"] for k in s}
