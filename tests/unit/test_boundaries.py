"""A service never imports another service's package, and shared imports no service."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "podium_gateway": ROOT / "services/gateway/src/podium_gateway",
    "podium_orchestrator": ROOT / "services/orchestrator/src/podium_orchestrator",
    "podium_agent_worker": ROOT / "services/agent-worker/src/podium_agent_worker",
    "podium_learner": ROOT / "services/learner/src/podium_learner",
    "podium": ROOT / "shared/src/podium",
}
SERVICES = set(PACKAGES) - {"podium"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def violations(packages: dict[str, Path]) -> list[str]:
    found = []
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            for root in sorted(imported_roots(path) & (SERVICES - {package})):
                found.append(f"{package}/{path.name} imports {root}")
    return found


def test_no_service_imports_another_service():
    assert all(folder.is_dir() for folder in PACKAGES.values())
    assert violations(PACKAGES) == []


def test_the_check_catches_a_cross_service_import(tmp_path):
    leaky = tmp_path / "podium_learner"
    leaky.mkdir()
    (leaky / "leak.py").write_text("import os\nfrom podium_gateway.app import create_app\n")
    (leaky / "fine.py").write_text("from podium.store import Run\nfrom podium_learner import x\n")
    assert violations({"podium_learner": leaky}) == [
        "podium_learner/leak.py imports podium_gateway"
    ]
