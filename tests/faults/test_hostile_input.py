"""(f) schemathesis generates requests from the gateway's own OpenAPI (authenticated with a
tenant key): no answer is a 5xx, and every answer conforms to the schema (status code,
content type, body). (g) An oversized body is refused with 413, with or without a
Content-Length."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.transport import Response

from tests.faults.harness import FaultReport, Tenant, record
from tests.support.stack import Stack

# Generated requests per API operation and mode (positive, negative), at most: some
# operations have fewer distinct inputs. Over 1,000 requests in all.
# FUZZ_EXAMPLES raises it for a deeper run by hand.
EXAMPLES_PER_MODE = int(os.environ.get("FUZZ_EXAMPLES", "60"))
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


# Stateful walks: each a chain of calls that feeds ids from one response into the next
# request, along the OpenAPI links (a new thread's id into its routes, a new run's id into the
# run routes).
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "120"))
STATEFUL_REQUESTS = 600
RUN_ROUTES = (
    "GET /v1/runs/{run_id}",
    "POST /v1/runs/{run_id}/cancel",
    "POST /v1/runs/{run_id}/resume",
    "GET /v1/runs/{run_id}/orchestration",
    "GET /v1/runs/{run_id}/events",
    "POST /v1/runs/{run_id}/feedback",
)
# Run routes the walks must reach with runs they created, at least three times each.
REACHED = (
    "GET /v1/runs/{run_id}",
    "POST /v1/runs/{run_id}/cancel",
    "GET /v1/runs/{run_id}/orchestration",
)


def _send_or_peek(
    http: httpx.Client, case: schemathesis.Case, headers: dict[str, str]
) -> httpx.Response:
    """Send a case; an event stream of a run that never ends (only the gateway runs here)
    is read up to its headers."""
    if not (case.method == "GET" and case.path.endswith("/events")):
        return _send(http, case, headers)
    kw = case.as_transport_kwargs(base_url=str(http.base_url).rstrip("/"), headers=headers)
    with http.stream(
        kw["method"], kw["url"], params=kw.get("params"), headers=kw.get("headers")
    ) as r:
        body = r.read() if r.status_code != 200 else b""
    peeked = httpx.Response(r.status_code, headers=r.headers, content=body, request=r.request)
    peeked._elapsed = r.elapsed  # what httpx sets once a response is read
    return peeked


def test_f_stateful_walks_reach_the_run_routes(api_stack: Stack, api_tenant: Tenant) -> None:
    """The stateful phase: schemathesis follows the links from run creation into the run
    routes with the ids of runs it created, and no answer is a 5xx."""
    schema = schemathesis.openapi.from_url(f"{api_stack.url}/openapi.json")
    headers = {"Authorization": f"Bearer {api_tenant.key}"}
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    linked: Counter[str] = Counter()  # run-route answers about a run that exists
    failures: list[str] = []
    # The walks stay on threads and runs: the tenant's other routes are fuzzed above.
    base = schema.include(path_regex=r"^/v1/(threads|runs)").as_state_machine()

    with httpx.Client(base_url=api_stack.url, timeout=15) as http:

        class Walk(base):  # type: ignore[misc, valid-type]
            def call(self, case: schemathesis.Case, **kwargs: Any) -> Response:
                response = _send_or_peek(http, case, headers)
                route = f"{case.method} {case.path}"
                sent[route] += 1
                statuses[response.status_code] += 1
                if route in RUN_ROUTES and response.status_code in (200, 201, 202, 409):
                    linked[route] += 1
                return Response.from_httpx(response, verify=False)

            def validate_response(
                self, response: Response, case: schemathesis.Case, **kwargs: Any
            ) -> None:
                # Collected, not raised: a walk cannot be replayed against a server whose
                # state moved on, so hypothesis must not try to shrink it.
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)
                except Exception as exc:
                    failures.append(f"{case.method} {case.path}: {str(exc)[:1500]}")

        # The server's state changes between walks, so hypothesis may find a walk it
        # explored before taking another turn (FlakyStrategyDefinition): that ends a round,
        # the counts so far stand, and new rounds run until enough walks were made.
        rounds = 0
        while rounds < 30 and (
            sum(sent.values()) < STATEFUL_REQUESTS or any(linked[r] < 3 for r in REACHED)
        ):
            rounds += 1
            with contextlib.suppress(FlakyStrategyDefinition):
                Walk.run(
                    settings=settings(
                        max_examples=STATEFUL_EXAMPLES,
                        deadline=None,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                        stateful_step_count=10,
                        # Replaying or shrinking a walk cannot give the same answers.
                        phases=[Phase.generate],
                    )
                )
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    record(
        FaultReport(
            test="f_schemathesis_stateful",
            submitted=sum(sent.values()),
            notes={
                "server_errors": server_errors,
                "statuses": dict(sorted(statuses.items())),
                "run_routes_on_created_runs": dict(sorted(linked.items())),
                "rounds": rounds,
            },
        )
    )
    assert server_errors == 0
    for route in (
        "GET /v1/runs/{run_id}",
        "POST /v1/runs/{run_id}/cancel",
        "GET /v1/runs/{run_id}/orchestration",
    ):
        assert linked[route] > 0, f"the stateful walks never reached {route}: {dict(linked)}"


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


def test_h_inputs_that_once_gave_a_500_are_refused_clearly(
    api_stack: Stack, api_tenant: Tenant
) -> None:
    """What deeper fuzzing found (a 500 each before): an id PostgreSQL cannot hold (a NUL),
    a cursor past the column's 32 bits, a NUL in a text field, an empty Idempotency-Key."""
    headers = {"Authorization": f"Bearer {api_tenant.key}"}
    with httpx.Client(base_url=api_stack.url, headers=headers, timeout=15) as http:
        thread = http.post("/v1/threads", json={}).json()["id"]
        cases = [
            ("GET", f"/v1/threads/{thread}/messages", {"params": {"after": 2**31}}),
            ("GET", f"/v1/threads/{thread}/messages", {"params": {"after": 10**30}}),
            ("GET", "/v1/threads/a%00b", {}),
            ("GET", "/v1/runs/a%00b", {}),
            ("POST", "/v1/runs/a%00b/cancel", {}),
            ("GET", f"/v1/runs/{'x' * 65}", {}),
            ("POST", "/v1/threads", {"json": {"title": "a\u0000b"}}),
            ("POST", f"/v1/threads/{thread}/runs", {"json": {"input": "a\u0000b"}}),
            ("PUT", "/v1/agents/nul", {"json": {"description": "a\u0000b"}}),
            (
                "POST",
                f"/v1/threads/{thread}/runs",
                {"json": {"input": "hi"}, "headers": {"Idempotency-Key": ""}},
            ),
        ]
        for method, path, kwargs in cases:
            response = http.request(method, path, **kwargs)
            assert response.status_code == 422, (method, path, response.text)
            assert response.json()["error"]["code"] == "validation_error"
        # A well-formed id of nothing is still 404, as another tenant's is.
        assert http.get(f"/v1/runs/{'0' * 32}").status_code == 404
