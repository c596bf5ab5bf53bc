"""The monitoring configuration is checked like code: dashboards (uids, every panel query
parses and uses only metrics the code exports), Prometheus configs and alert rules (promtool
check, and a promtool unit test per alert that fires when it should and not before), the
metric catalogue's conventions, and `podium dashboards push` against a fake Grafana."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from click.testing import CliRunner

from tests.support.monitoring import (
    DASHBOARDS,
    PROMETHEUS_CONFIGS,
    RULE_TESTS_DIR,
    RULES_DIR,
    exported_metric_names,
    load_dashboards,
    load_rules,
    metric_names,
    panel_queries,
    promtool,
    render,
    rule_files,
    variable_metric_names,
    variable_queries,
)

EXPECTED_DASHBOARDS = {
    "podium-overview": "Podium — Overview",
    "podium-orchestration": "Podium — Orchestration",
    "podium-agents": "Podium — Agents & providers",
    "podium-tenants": "Podium — Tenants",
    "podium-learner": "Podium — Learner",
}
SERVICES = ("gateway", "orchestrator", "agent-worker", "learner")


# --- dashboards ---------------------------------------------------------------------------


def test_the_five_dashboards_exist_with_unique_uids_and_titles():
    dashboards = load_dashboards().values()
    uids = [d["uid"] for d in dashboards]
    assert len(uids) == len(set(uids)), uids
    assert {d["uid"]: d["title"] for d in dashboards} == EXPECTED_DASHBOARDS
    titles = [d["title"] for d in dashboards]
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path):
    dashboard = json.loads(path.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert "podium" in dashboard["tags"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == "podium-prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
            # Template variables are used as regex matchers, so "All" (.*) works.
            for var in re.findall(r"\$([a-z_]+)", target["expr"]):
                if not var.startswith("__"):
                    assert var in variables, f"{panel['title']}: unknown ${var}"
                    assert f'=~"${var}"' in target["expr"], f"{panel['title']}: ${var} needs =~"


def test_dashboards_cover_what_the_issue_asks():
    used: dict[str, set[str]] = {}
    for q in panel_queries():
        used.setdefault(q.dashboard, set()).update(metric_names(q.expr))
    assert {
        "podium_runs_finished_total",
        "podium_run_duration_seconds_bucket",
        "podium_queue_depth_messages",
    } <= used["podium-overview"]
    assert {
        "podium_orchestrator_decisions_total",
        "podium_orchestrator_fallbacks_total",
        "podium_orchestrator_guard_hits_total",
        "podium_orchestrator_decision_duration_seconds_bucket",
        "podium_orchestrator_decision_tokens_total",
    } <= used["podium-orchestration"]
    assert {
        "podium_agent_calls_total",
        "podium_agent_call_duration_seconds_bucket",
        "podium_agent_call_ttft_seconds_bucket",
        "podium_agent_tokens_total",
        "podium_agent_cost_usd_total",
        "podium_provider_errors_total",
    } <= used["podium-agents"]
    assert {"podium_tenant_runs_total", "podium_quota_rejections_total"} <= used["podium-tenants"]
    assert {
        "podium_learner_feedback_total",
        "podium_learner_postmortems_total",
        "podium_learner_policy_overrules_total",
    } <= used["podium-learner"]


def test_every_panel_uses_only_metrics_the_code_exports():
    exported = exported_metric_names()
    problems = []
    for q in panel_queries():
        names = metric_names(q.expr)
        if not names:
            problems.append(f"{q.name} ({q.title}): selects no metric")
        for name in sorted(names - exported):
            problems.append(f"{q.name} ({q.title}): {name} is not exported by the code")
    for uid, query in variable_queries():
        for name in sorted(variable_metric_names(query) - exported):
            problems.append(f"{uid} variable {query!r}: {name} is not exported by the code")
    assert not problems, "\n".join(problems)


def test_every_panel_query_parses(tmp_path: Path):
    queries = panel_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard-panels",
                "rules": [
                    {"record": f"panel:query_{index}", "expr": render(q.expr)}
                    for index, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (le) (rate(a_bucket[$__rate_interval]))", {"a_bucket"}),
        ('x{job=~"g|o", le="0.5"} / on(job) group_left(instance) y', {"x", "y"}),
        ("sum(rate(x[5m] offset 1h)) by (le) > bool 3 unless absent(w)", {"x", "w"}),
        ('topk(10, sum without (a) (z)) or on() vector(0) + {__name__="n"}', {"z", "n"}),
        ("histogram_quantile(0.95, sum by (le) (rate(h[1m:10s])))  # c", {"h"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)")', {"up"}),
    ],
)
def test_metric_names_of_a_promql_expression(expr: str, names: set[str]):
    assert metric_names(expr) == names


def test_rendering_replaces_grafana_variables():
    assert (
        render('rate(x{p=~"$pattern", t=~"${tenant}"}[$__rate_interval])', "30s")
        == 'rate(x{p=~".*", t=~".*"}[30s])'
    )


# --- Prometheus configs and alert rules ---------------------------------------------------


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_prometheus_config_is_valid_and_scrapes_every_service(config: Path):
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert set(SERVICES) <= jobs


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", *rule_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass():
    files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    result = promtool("test", "rules", *files, cwd=RULE_TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_the_issue_s_alerts_exist():
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    assert {
        "PodiumRunFailureRateHigh",  # high run failure rate
        "PodiumQueueBacklogGrowing",  # growing queue backlog
        "PodiumServiceDown",  # worker down
        "PodiumServiceUnavailable",
        "PodiumProviderErrorSpike",  # provider error spike
        "PodiumApiLatencySLOBurn",  # p95 latency SLO burn
        "PodiumRunLatencySLOBurn",
        "PodiumOutboxLagging",  # outbox lag
        "PodiumBudgetHoldSpike",  # budget-hold spike
    } <= alerts


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(
        float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text))
    )


def test_every_alert_has_a_unit_test_that_fires_and_one_not_before():
    """For each alert, some promtool test case expects it firing at time T, and the same
    case expects it absent at an earlier time (the `for:` duration not yet over)."""
    covered: dict[str, bool] = {}
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            checks: dict[str, list[tuple[float, bool]]] = {}
            for check in case.get("alert_rule_test", []):
                fires = bool(check.get("exp_alerts"))
                checks.setdefault(check["alertname"], []).append(
                    (_duration_s(check["eval_time"]), fires)
                )
            for alert, evals in checks.items():
                firing = [t for t, fires in evals if fires]
                quiet = [t for t, fires in evals if not fires]
                if firing and any(q < min(firing) for q in quiet):
                    covered[alert] = True
                else:
                    covered.setdefault(alert, False)
    alerts = [r["alert"] for r in load_rules() if "alert" in r]
    missing = [a for a in alerts if not covered.get(a)]
    assert not missing, f"alerts without a fires/not-before unit test: {missing}"


def test_rules_use_only_exported_metrics_and_their_own_recordings():
    exported = exported_metric_names()
    rules = load_rules()
    recorded = {r["record"] for r in rules if "record" in r}
    builtin = {"up"}  # synthesised by Prometheus for every target
    problems = []
    for rule in rules:
        for name in metric_names(rule["expr"]) - exported - recorded - builtin:
            problems.append(f"{rule.get('alert') or rule.get('record')}: {name}")
    assert not problems, problems


def test_slo_rules_use_existing_histogram_buckets():
    """An `le` the histogram does not have would make the SLO ratio silently 1 (all slow)."""
    from prometheus_client.utils import floatToGoString

    from podium.metrics import HTTP_DURATION, RUN_DURATION

    buckets = {
        "podium_http_request_duration_seconds_bucket": HTTP_DURATION._upper_bounds,
        "podium_run_duration_seconds_bucket": RUN_DURATION._upper_bounds,
    }
    seen = 0
    for rule in load_rules():
        for metric, le in re.findall(r'(podium_\w+_bucket)\{[^}]*le="([^"]+)"', rule["expr"]):
            assert le in {floatToGoString(b) for b in buckets[metric]}, (rule, le)
            seen += 1
    assert seen >= 8


def test_rules_are_labelled_and_annotated():
    for rule in load_rules():
        if "alert" not in rule:
            assert rule["record"].startswith("podium:")
            continue
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for"), f"{rule['alert']} fires on a single evaluation"


def test_rule_files_are_loaded_by_both_configs():
    for config in PROMETHEUS_CONFIGS:
        patterns = yaml.safe_load(config.read_text())["rule_files"]
        loaded = {p for pattern in patterns for p in config.parent.glob(pattern)}
        assert set(rule_files()) <= loaded, config.name
        assert RULES_DIR in {p.parent for p in loaded}


# --- the metric catalogue -----------------------------------------------------------------


def test_metric_names_follow_the_conventions():
    from prometheus_client import REGISTRY

    import podium.celery_metrics as celery_metrics

    families = [m for m in REGISTRY.collect() if m.name.startswith("podium_")]
    families += list(celery_metrics.StateCollector.families().values())
    for family in families:
        assert re.fullmatch(r"podium_[a-z0-9_]+", family.name), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge":
            assert family.name.endswith(("_messages", "_seconds", "_in_flight", "_slots", "_up")), (
                family.name
            )
        assert family.documentation, family.name


def test_no_metric_has_a_raw_tenant_label():
    from prometheus_client.metrics import MetricWrapperBase

    import podium.celery_metrics
    import podium.metrics

    for module in (podium.metrics, podium.celery_metrics):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                labels = set(obj._labelnames)
                assert not labels & {"tenant_id", "run_id", "thread_id", "call_id", "id"}


def test_tenant_label_only_names_allowlisted_tenants():
    from podium.metrics import parse_allowlist, tenant_label

    allow = parse_allowlist(" t-1, ,t-2,")
    assert allow == {"t-1", "t-2"}
    assert tenant_label("t-1", allow) == "t-1"
    assert tenant_label("t-3", allow) == "other"
    assert tenant_label(None, allow) == "other"
    assert tenant_label("t-1", frozenset()) == "other"


def test_tenant_allowlist_comes_from_settings(monkeypatch: pytest.MonkeyPatch):
    from podium.settings import Settings

    monkeypatch.setenv("PODIUM_METRICS_TENANT_ALLOWLIST", "acme,globex")
    assert Settings().metrics_tenant_allowlist == "acme,globex"


def test_model_label_is_bounded_by_the_price_table():
    from podium.metrics import known_models, model_label

    known = known_models()
    assert "gpt-4o-mini" in known
    assert not any("*" in k for k in known)
    assert model_label("gpt-4o-mini", "openai") == "gpt-4o-mini"
    assert model_label("GPT-4o-mini") == "gpt-4o-mini"
    assert model_label("claude-sonnet-4-5-20250929", "anthropic") == "other"  # a glob entry
    assert model_label("my-finetune-42") == "other"
    assert model_label(None) == "other"


def test_rating_task_and_queue_labels_are_bounded():
    from podium.celery_metrics import queue_label, task_label
    from podium.metrics import agent_label, rating_label

    assert [rating_label(r) for r in (1, "5", 0, 6, "x")] == ["1", "5", "other", "other", "other"]
    assert task_label("podium.orchestrator.advance_run") == "podium.orchestrator.advance_run"
    assert task_label("celery.backend_cleanup") == "other"
    assert queue_label("orchestrator") == "orchestrator"
    assert queue_label("agents.heavy") == "agents.heavy"
    assert queue_label("agents.") == "other"
    assert queue_label("agents.a b") == "other"
    assert queue_label("celery") == "other"
    assert queue_label(None) == "other"
    assert agent_label("coder") == "coder"
    assert agent_label("my-bot") == "custom"


def test_celery_signal_handlers_count_and_time_tasks():
    from podium import celery_metrics as cm

    class Request:
        delivery_info: ClassVar[dict[str, Any]] = {"routing_key": "agents.default"}

    class Task:
        name = "podium.agent_worker.execute_call"
        request = Request()

    def value(metric: Any, *labels: str) -> float:
        return float(metric.labels(*labels)._value.get())

    labels = ("podium.agent_worker.execute_call", "agents.default")
    before = {
        m: value(m, *labels)
        for m in (cm.CELERY_TASKS_STARTED, cm.CELERY_TASKS_SUCCEEDED, cm.CELERY_TASKS_RETRIED)
    }
    cm._on_received(
        request=type("R", (), {"name": Task.name, "delivery_info": Request.delivery_info})
    )
    cm._on_prerun(sender=Task, task_id="t1", task=Task)
    assert value(cm.AGENT_CALLS_IN_FLIGHT, "agents.default") >= 1
    cm._on_success(sender=Task)
    cm._on_postrun(sender=Task, task_id="t1", task=Task)
    cm._on_retry(sender=Task, request=Request())
    assert value(cm.CELERY_TASKS_STARTED, *labels) == before[cm.CELERY_TASKS_STARTED] + 1
    assert value(cm.CELERY_TASKS_SUCCEEDED, *labels) == before[cm.CELERY_TASKS_SUCCEEDED] + 1
    assert value(cm.CELERY_TASKS_RETRIED, *labels) == before[cm.CELERY_TASKS_RETRIED] + 1
    assert value(cm.CELERY_TASKS_IN_FLIGHT, *labels) == 0
    assert value(cm.AGENT_CALLS_IN_FLIGHT, "agents.default") == 0
    samples = {
        s.name: s.value
        for s in cm.CELERY_TASK_DURATION.labels(*labels).collect()[0].samples
        if s.name.endswith("_count")
    }
    assert samples["podium_celery_task_duration_seconds_count"] >= 1
    # A postrun without its prerun (handlers connected mid-task) changes nothing.
    cm._on_postrun(sender=Task, task_id="never-started", task=Task)
    assert value(cm.CELERY_TASKS_IN_FLIGHT, *labels) == 0


def test_gateway_middleware_labels_by_route_template_and_bounds_methods():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from podium.metrics import HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS
    from podium_gateway.middleware import MetricsMiddleware

    app = FastAPI()

    @app.get("/v1/probe/{item_id}")
    def probe(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @app.get("/v1/probe/{item_id}/events")
    def events(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    app.add_middleware(MetricsMiddleware)

    def count(route: str, method: str, status: str) -> float:
        return float(HTTP_REQUESTS.labels(route, method, status)._value.get())

    def timed(route: str) -> float:
        [sample] = [
            s
            for s in HTTP_DURATION.labels(route, "GET").collect()[0].samples
            if s.name.endswith("_count")
        ]
        return float(sample.value)

    before = count("/v1/probe/{item_id}", "GET", "200")
    with TestClient(app) as client:
        assert client.get("/v1/probe/abc123").status_code == 200
        assert client.get("/v1/probe/abc123/events").status_code == 200
        client.request("BREW", "/v1/probe/abc123")
        client.get("/nowhere/42")
    assert count("/v1/probe/{item_id}", "GET", "200") == before + 1
    assert count("/v1/probe/{item_id}/events", "GET", "200") >= 1
    assert timed("/v1/probe/{item_id}/events") == 0  # streams are counted, not timed
    assert timed("/v1/probe/{item_id}") >= 1
    assert count("/v1/probe/{item_id}", "other", "405") >= 1  # an unknown method is "other"
    assert count("unmatched", "GET", "404") >= 1  # raw paths never become labels
    for kind in ("request", "stream"):
        assert HTTP_IN_FLIGHT.labels(kind)._value.get() == 0


def test_kombu_redis_key_naming_is_what_the_collector_reads():
    from kombu.transport.redis import Channel

    from podium.celery_metrics import queue_keys

    channel = object.__new__(Channel)  # only the naming helpers, no connection
    expected = [Channel._q_for_pri(channel, "agents.default", p) for p in Channel.priority_steps]
    assert queue_keys("agents.default") == expected
    assert expected[1] == "agents.default\x06\x163"
    assert queue_keys("learner", "pfx:")[0] == "pfx:learner"


def test_outbox_lag_is_the_age_of_the_oldest_unpublished_row(tmp_path: Path):
    from datetime import timedelta

    from prometheus_client import CollectorRegistry, generate_latest

    from podium.celery_metrics import install_state_collector
    from podium.settings import Settings
    from podium.store.db import Database
    from podium.store.models import OutboxMessage, utcnow

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", broker_url="memory://")
    db = Database(settings)
    OutboxMessage.__table__.create(db.engine)
    registry = CollectorRegistry()
    collector = install_state_collector(settings, db, registry)
    assert install_state_collector(settings, db, registry) is collector  # registered once
    assert collector.outbox_lag() == (0, 0.0)
    now = utcnow()
    with db.session() as session:
        for age, published in ((90, None), (10, None), (500, now)):
            session.add(
                OutboxMessage(
                    task="podium.learner.run_completed",
                    queue="learner",
                    payload={},
                    created_at=now - timedelta(seconds=age),
                    published_at=published,
                )
            )
    count, lag = collector.outbox_lag()
    assert count == 2
    assert 90 <= lag < 100
    text = generate_latest(registry).decode()
    assert "podium_outbox_unpublished_messages 2.0" in text
    assert 'podium_state_collector_up{source="store"} 1.0' in text
    # The in-process broker of the embedded mode has no Redis lists: no depth, no error.
    assert "podium_queue_depth_messages{" not in text
    assert 'source="broker"' not in text
    db.dispose()


@pytest.mark.parametrize(
    ("argv", "pool", "concurrency"),
    [
        ([], "threads", 8),
        (["--pool", "prefork", "-c", "2"], "prefork", 2),
        (["--pool=processes", "--concurrency=3"], "processes", 3),
        (["-Pprefork", "-c4", "-Q", "x"], "prefork", 4),
        (["--loglevel", "DEBUG", "-c", "nope"], "threads", 8),
    ],
)
def test_worker_reads_pool_and_concurrency_overrides(argv, pool, concurrency):
    from podium.worker_main import effective_concurrency, effective_pool

    assert effective_pool("threads", argv) == pool
    assert effective_concurrency(8, argv) == concurrency


# --- podium dashboards push ---------------------------------------------------------------


class FakeGrafana(BaseHTTPRequestHandler):
    """Just enough of Grafana's HTTP API: folders and dashboards/db."""

    requests: ClassVar[list[tuple[str, str, str | None, Any]]] = []
    folders: ClassVar[dict[str, str]] = {}
    reject_token: ClassVar[str | None] = None

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        auth = self.headers.get("Authorization")
        self.requests.append((self.command, self.path, auth, body))
        return body

    def _authorized(self) -> bool:
        if self.reject_token and self.headers.get("Authorization") == f"Bearer {self.reject_token}":
            self._reply(401, {"message": "invalid API key"})
            return False
        return True

    def do_GET(self) -> None:
        self._record()
        if not self._authorized():
            return
        match = re.fullmatch(r"/api/folders/([^/]+)", self.path)
        if match and match.group(1) in self.folders:
            self._reply(200, {"uid": match.group(1), "title": self.folders[match.group(1)]})
        else:
            self._reply(404, {"message": "folder not found"})

    def do_POST(self) -> None:
        body = self._record()
        if not self._authorized():
            return
        if self.path == "/api/folders":
            self.folders[body["uid"]] = body["title"]
            self._reply(200, {"uid": body["uid"], "title": body["title"]})
        elif self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}", "version": 1})
        else:
            self._reply(404, {"message": "not found"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[str]:
    FakeGrafana.requests = []
    FakeGrafana.folders = {}
    FakeGrafana.reject_token = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _push(*args: str) -> Any:
    from podium.cli.main import cli

    return CliRunner().invoke(cli, ["dashboards", "push", *args], catch_exceptions=False)


def test_dashboards_push_uploads_every_dashboard_into_a_folder(grafana: str):
    result = _push("--url", grafana, "--token", "glsa_test", "--datasource-uid", "prom-2")
    assert result.exit_code == 0, result.output
    assert FakeGrafana.folders == {"podium": "Podium"}
    posted = [r for r in FakeGrafana.requests if r[1] == "/api/dashboards/db"]
    assert {r[3]["dashboard"]["uid"] for r in posted} == set(EXPECTED_DASHBOARDS)
    for _method, _path, auth, body in posted:
        assert auth == "Bearer glsa_test"
        assert body["overwrite"] is True
        assert body["folderUid"] == "podium"
        assert body["dashboard"]["id"] is None
        [ds] = [v for v in body["dashboard"]["templating"]["list"] if v["name"] == "datasource"]
        assert ds["current"]["value"] == "prom-2"
    assert "5 dashboard(s) pushed" in result.output
    # Pushing again reuses the folder and overwrites the dashboards.
    FakeGrafana.requests.clear()
    assert _push("--url", grafana, "--token", "glsa_test").exit_code == 0
    assert not [r for r in FakeGrafana.requests if r[1] == "/api/folders"]


def test_dashboards_push_reports_a_refusal(grafana: str):
    FakeGrafana.reject_token = "bad"
    result = _push("--url", grafana, "--token", "bad")
    assert result.exit_code == 1
    assert "refused" in result.output and "Unauthorized" in result.output


def test_dashboards_push_reports_an_unreachable_grafana(tmp_path: Path):
    from tests.support.stack import free_port

    result = _push("--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "--timeout", "2")
    assert result.exit_code == 1
    assert "Grafana at" in result.output


def test_dashboards_push_refuses_a_bad_folder(tmp_path: Path):
    (tmp_path / "a.json").write_text(json.dumps({"uid": "x", "title": "A"}))
    (tmp_path / "b.json").write_text(json.dumps({"uid": "x", "title": "B"}))
    result = _push("--url", "http://127.0.0.1:9", "--token", "t", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "uid 'x' is also used" in result.output
