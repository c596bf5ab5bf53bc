"""docker-compose.yml and the monitoring configs are well-formed and name what the code runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_the_full_stack_with_healthchecks():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "redis",
        "postgres",
        "migrate",
        "gateway",
        "orchestrator",
        "agent-worker",
        "learner",
        "prometheus",
        "grafana",
    } <= set(services)
    for name in ("redis", "postgres", "gateway", "orchestrator", "agent-worker", "learner"):
        assert "healthcheck" in services[name], name
    assert "container_name" not in services["agent-worker"]  # it must scale
    assert (
        services["gateway"]["depends_on"]["migrate"]["condition"]
        == "service_completed_successfully"
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_is_accepted_by_docker_compose():
    result = subprocess.run(
        ["docker-compose", "config", "-q"], check=False, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_service_commands_exist_as_entry_points():
    from importlib.metadata import entry_points

    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert {
        "podium",
        "podium-gateway",
        "podium-orchestrator",
        "podium-agent-worker",
        "podium-learner",
    } <= scripts
