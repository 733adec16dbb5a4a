"""A property-based fuzz of the API's OpenAPI schema (schemathesis) against the running daemon (real
Kafka, Redis and model): valid and invalid requests of every operation; no server error, every error
answer JSON with a message, and every answer as the schema declares it. Few examples per operation,
so it stays quick."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import ApiDaemon

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

EXAMPLES = 15  # per operation and mode
# negative_data_rejection is left out: an "invalid" object or array in a query string arrives as a
# valid string (k=v), and the Authorization header is replaced by the test's valid key
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _has_message(response: object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    assert status < 500, f"server error {status}: {response.text[:300]}"  # type: ignore[attr-defined]
    if status >= 400:
        body = response.json()  # type: ignore[attr-defined]
        assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body


def _fuzz(url: str, key: str) -> int:
    """Runs every case; returns how many requests were made."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    calls = [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _property(operation, mode, url, headers, calls)()
    return calls[0]


def _property(
    operation: schemathesis.APIOperation, mode: GenerationMode, url: str, headers: dict[str, str], calls: list[int]
) -> Callable[[], None]:
    endless = operation.path == "/v1/stream"  # a 200 never ends: only its refusals are read through

    @hypothesis.settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        calls[0] += 1
        if endless:
            sent = {**{k: str(v) for k, v in (case.headers or {}).items()}, **headers}
            try:
                request = httpx.Request("GET", url + case.formatted_path, params=case.query, headers=sent)
            except httpx.InvalidURL:  # beyond httpx's own URL limit (64 KiB): not a request it can send
                hypothesis.reject()
            with httpx.Client(timeout=10) as http, contextlib.closing(http.send(request, stream=True)) as response:
                if response.status_code >= 400:
                    response.read()
                    _has_message(response)
            return
        response = case.call(base_url=url, headers=headers, timeout=10)
        _has_message(response)
        case.validate_response(response, checks=CHECKS, headers=headers)

    return check  # type: ignore[no-any-return]


async def test_the_schema_fuzzed_against_the_running_daemon(api_daemon: ApiDaemon) -> None:
    # requests from a worker thread: the daemon answers on this event loop meanwhile
    calls = await asyncio.to_thread(_fuzz, api_daemon.url, api_daemon.key)
    assert calls >= 5 * EXAMPLES, f"only {calls} requests made"
