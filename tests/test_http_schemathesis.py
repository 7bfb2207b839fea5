"""Property-based tests over the daemon's OpenAPI document: whatever schemathesis sends, the daemon
answers as documented, never with a 5xx other than 503, and keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapter import Client, Settings
from adapter._http import create_app
from tests.support.http import HEADERS, ThreadedDaemon, _hashes, make_settings


@pytest.fixture(scope="module")
def daemon() -> Iterator[ThreadedDaemon]:
    with ThreadedDaemon(_settings()) as running:
        yield running


def _settings() -> Settings:
    password_hash, _, _ = _hashes()
    return make_settings(
        auth={"principals": [{"name": "ops", "password_hash": password_hash, "allow": ["#"]}]},
        # Bounded: a generated wait lasts at most a second, and nothing is rate limited.
        http={"max_wait": 1.0, "rate_limit": 0, "max_body_bytes": 4096},
    )


# The document the daemon serves at /openapi.json (test_the_served_document_is_this_one checks
# it): built here because the test cases are generated at collection, before any daemon runs.
DOCUMENT = create_app(_settings(), Client("memory://")).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_answers_as_documented(case: Any, daemon: ThreadedDaemon) -> None:
    response = case.call(base_url=daemon.url, headers=HEADERS, timeout=10)
    assert response.status_code < 500 or response.status_code == 503, response.text
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )


def test_the_served_document_is_this_one(daemon: ThreadedDaemon) -> None:
    assert httpx.get(f"{daemon.url}/openapi.json").json() == DOCUMENT


def test_the_daemon_still_serves_afterwards(daemon: ThreadedDaemon) -> None:
    assert httpx.get(f"{daemon.url}/healthz").status_code == 200
    sent = httpx.post(f"{daemon.url}/vco/api/customevent/t.after", headers=HEADERS)
    assert sent.status_code == 200
