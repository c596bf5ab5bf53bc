"""(f) schemathesis generates requests from the gateway's own OpenAPI (authenticated with a
tenant key): no answer is a 5xx, and every answer conforms to the schema (status code,
content type, body). (g) An oversized body is refused with 413, with or without a
Content-Length."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.faults.harness import FaultReport, Tenant, record
from tests.support.stack import Stack

# Generated requests per API operation and mode (positive, negative), at most: some
# operations have fewer distinct inputs. Over 1,000 requests in all.
EXAMPLES_PER_MODE = 60
MIN_REQUESTS = 1000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

_lock = threading.Lock()
SENT: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def api_tenant(api_stack: Stack) -> Iterator[Tenant]:
    tenant = Tenant(api_stack, "fuzz")
    yield tenant
    tenant.close()


def _send(http: httpx.Client, case: schemathesis.Case, headers: dict[str, str]) -> httpx.Response:
    """Send a generated case with httpx. (schemathesis's own ``case.call`` goes through
    requests, which breaks when urllib3-future, pulled in by grafana-client, has replaced
    urllib3; ``validate_response`` takes an httpx response as it is.)"""
    kw = case.as_transport_kwargs(base_url=str(http.base_url).rstrip("/"), headers=headers)
    body: dict[str, Any] = {}
    if "json" in kw:
        body["json"] = kw["json"]
    elif "data" in kw:
        data = kw["data"]
        body["content" if isinstance(data, (bytes, str)) else "data"] = data
    return http.request(
        kw["method"],
        kw["url"],
        params=kw.get("params"),
        headers=kw.get("headers"),
        cookies=kw.get("cookies") or None,
        **body,
    )


def _fuzz_operation(
    http: httpx.Client,
    operation: Any,
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
) -> list[str]:
    """Send ``EXAMPLES_PER_OPERATION`` generated requests; the failed checks, described."""
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        try:
            response = _send(http, case, headers)
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            return  # not even sendable as HTTP (e.g. a header with a newline)
        with _lock:
            SENT[f"{case.method} {case.path}"] += 1
            STATUSES[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        fuzz()
    except Unsatisfiable:
        pass  # no invalid request exists for it (a free-form path segment, no parameters)
    except Exception as exc:  # hypothesis re-raises the (shrunk) failure: note it, go on
        failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    return failures


def test_f_schemathesis(api_stack: Stack, api_tenant: Tenant) -> None:
    """Every operation of /openapi.json, with valid (positive) and invalid (negative)
    generated data, authenticated with a tenant key."""
    schema = schemathesis.openapi.from_url(f"{api_stack.url}/openapi.json")
    headers = {"Authorization": f"Bearer {api_tenant.key}"}
    failures: list[str] = []
    operations = 0
    with httpx.Client(base_url=api_stack.url, timeout=15) as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            for mode in schemathesis.GenerationMode:
                failures += _fuzz_operation(http, operation, mode, headers)
    total = sum(SENT.values())
    server_errors = sum(n for status, n in STATUSES.items() if status >= 500)
    record(
        FaultReport(
            test="f_schemathesis",
            submitted=total,
            notes={
                "operations": operations,
                "server_errors": server_errors,
                "check_failures": len(failures),
                "statuses": dict(sorted(STATUSES.items())),
            },
        )
    )
    assert not failures, "\n\n".join(failures)
    assert server_errors == 0
    assert total >= MIN_REQUESTS, f"only {total} requests generated"


def test_g_oversized_body_gets_413(api_stack: Stack, api_tenant: Tenant) -> None:
    headers = {"Authorization": f"Bearer {api_tenant.key}"}
    thread = httpx.post(f"{api_stack.url}/v1/threads", json={}, headers=headers).json()
    url = f"{api_stack.url}/v1/threads/{thread['id']}/runs"
    limit = 1_048_576

    # With a Content-Length: refused before the body is read.
    big = b'{"input": "' + b"x" * (limit + 10) + b'"}'
    r = httpx.post(url, content=big, headers={**headers, "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    # Chunked, without a Content-Length: refused once the limit is crossed.
    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(40):
            yield b"y" * 32_768  # 40 x 32 KiB = 1.25 MiB
        yield b'"}'

    r = httpx.post(url, content=chunks(), headers={**headers, "content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    # Under the limit, the same chunked upload is accepted.
    def small() -> Iterator[bytes]:
        yield b'{"input": "'
        yield b"z" * 1000
        yield b'"}'

    r = httpx.post(url, content=small(), headers={**headers, "content-type": "application/json"})
    assert r.status_code == 202
    record(FaultReport(test="g_oversized_413", submitted=3, accepted=1, rejected_503=0))
