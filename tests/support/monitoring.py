"""Helpers for the monitoring checks: Prometheus's tools (installed when missing), the
dashboards' panel queries, the metric names a PromQL expression uses, and the metric names
the code exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
RULES_DIR = MONITORING / "prometheus" / "rules"
RULE_TESTS_DIR = MONITORING / "prometheus" / "tests"
PROMETHEUS_CONFIGS = (
    MONITORING / "prometheus" / "prometheus.yml",
    MONITORING / "prometheus" / "prometheus.compose.yml",
)

# --- Prometheus's tools -------------------------------------------------------------------


def ensure_prometheus_tools() -> tuple[str, str]:
    """Paths of ``promtool`` and ``prometheus``. When missing, Debian's ``prometheus``
    package is installed if we are root (as CI is); otherwise the test fails saying how."""
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool and prometheus:
        return promtool, prometheus
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            "promtool and prometheus are needed by the monitoring tests: install Debian's "
            "`prometheus` package (sudo apt-get install -y prometheus), or run the tests as "
            "root on Debian to have them installed automatically"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if result.returncode != 0 or not (promtool and prometheus):
        pytest.fail(f"apt-get install prometheus failed:\n{result.stdout}\n{result.stderr}")
    return promtool, prometheus


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool, _ = ensure_prometheus_tools()
    return subprocess.run(
        [tool, *map(str, args)], capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )


# --- dashboards ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # uid
    panel_id: int
    title: str
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard}/{self.panel_id}{self.ref_id}"


def load_dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def panel_queries() -> list[PanelQuery]:
    queries = []
    for dashboard in load_dashboards().values():
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(
                        dashboard["uid"],
                        panel["id"],
                        panel["title"],
                        target["refId"],
                        target["expr"],
                    )
                )
    return queries


def variable_queries() -> list[tuple[str, str]]:
    """(dashboard uid, query) of every query-type template variable."""
    found = []
    for dashboard in load_dashboards().values():
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]
                found.append(
                    (dashboard["uid"], query["query"] if isinstance(query, dict) else query)
                )
    return found


def render(expr: str, interval: str = "1m") -> str:
    """A panel query as Prometheus would get it from Grafana: interval variables replaced by
    ``interval``, template variables by the ``.*`` their "All" value stands for."""
    for var in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(var, interval)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


# --- PromQL: the metric names an expression uses ------------------------------------------

_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
        "group_right", "offset", "bool", "inf", "nan", "atan2",
        # aggregation operators ("sum by (le) (...)": not always followed by a parenthesis)
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?:[a-zA-Z]+[0-9]*)*)
  | (?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=,@:])
    """,
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize PromQL at {pos}: {expr[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are neither functions,
    aggregations, keywords nor label names (inside ``{...}`` or a ``by (...)`` list), plus
    ``{__name__="..."}`` matchers."""
    tokens = _tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "open" and text in "{[":
            close = "}" if text == "{" else "]"
            j = i + 1
            while j < len(tokens) and tokens[j][1] != close:
                if tokens[j][1] == "__name__" and j + 2 < len(tokens) and tokens[j + 1][1] == "=":
                    names.add(tokens[j + 2][1][1:-1])
                j += 1
            i = j + 1
            continue
        if kind == "ident":
            lowered = text.lower()
            if lowered in _LABEL_LIST_KEYWORDS and following == "(":
                depth, j = 0, i + 1
                while j < len(tokens):
                    depth += {"(": 1, ")": -1}.get(tokens[j][1], 0)
                    if depth == 0:
                        break
                    j += 1
                i = j + 1
                continue
            if lowered not in _KEYWORDS and following != "(":
                names.add(text)
        i += 1
    return names


def variable_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query (label_values(metric, label),
    query_result(expr), or metrics(...))."""
    match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    if match:
        return metric_names(match.group(1))
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
    if match:
        return metric_names(match.group(1))
    return metric_names(query)


# --- what the code exports ----------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def exported_metric_names() -> set[str]:
    """Every sample name the code can export: the podium_* families registered by importing
    podium.metrics and podium.celery_metrics (read from the registry, with each type's
    sample suffixes), plus the families of the shared-state collector."""
    from prometheus_client import REGISTRY

    import podium.celery_metrics as celery_metrics
    import podium.metrics  # noqa: F401  (registers the metrics)

    names: set[str] = set()
    families = [m for m in REGISTRY.collect() if m.name.startswith("podium_")]
    families += list(celery_metrics.StateCollector.families().values())
    for family in families:
        for suffix in _SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def load_rules() -> list[dict[str, Any]]:
    rules = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules
