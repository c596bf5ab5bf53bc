"""Run, agent-call and thread state has one owner: only podium.lifecycle writes the tables
that hold it. This reads the code (as test_boundaries does for imports); the store's own guard
(podium.store.guards) refuses such writes at run time as well."""

from __future__ import annotations

import ast
from pathlib import Path

from podium.store.guards import OWNED_TABLES
from podium.store.models import Base

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "shared/src/podium", *sorted((ROOT / "services").glob("*/src/*"))]
OWNER = ROOT / "shared/src/podium/lifecycle"
# Migrations create and alter these tables; that is not state.
EXEMPT = [ROOT / "shared/src/podium/store/migrations"]

OWNED_MODELS = {
    mapper.class_.__name__
    for mapper in Base.registry.mappers
    if mapper.local_table.name in OWNED_TABLES  # type: ignore[union-attr]
}
# Columns that carry state, assigned on a row object (``run.status = ...``).
STATE_COLUMNS = {
    column.key
    for mapper in Base.registry.mappers
    if mapper.local_table.name in OWNED_TABLES  # type: ignore[union-attr]
    for column in mapper.columns
} - {"id", "tenant_id"}
# Names a row of those tables goes by in this code base.
ROW_NAMES = {"run", "call", "thread", "event", "decision", "active", "sub"}
OWNER_HELPERS = {"append_event", "next_seq", "open_sub_thread", "owner_writes"}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _model_reference(func: ast.AST) -> bool:
    """``Run(...)`` or ``models.Run(...)``, not ``threading.Thread(...)``."""
    if isinstance(func, ast.Name):
        return True
    return isinstance(func, ast.Attribute) and _name(func.value) in ("models", "store")


def violations_in(path: Path, source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source, str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            func = _name(node.func)
            if func in ("update", "insert", "delete") and node.args:
                target = _name(node.args[0])
                if target in OWNED_MODELS:
                    found.append(f"{where} {func}({target})")
            elif func in OWNED_MODELS and _model_reference(node.func):
                found.append(f"{where} creates a {func}")
            elif func in OWNER_HELPERS:
                found.append(f"{where} calls {func}")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if (
                        isinstance(t, ast.Attribute)
                        and t.attr in STATE_COLUMNS
                        and _name(t.value) in ROW_NAMES
                    ):
                        found.append(f"{where} assigns {_name(t.value)}.{t.attr}")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "podium.store.guards"
            and any(alias.name == "owner_writes" for alias in node.names)
        ):
            found.append(f"{where} imports owner_writes")
    return sorted(found, key=lambda v: int(v.split(":")[1].split()[0]))


def violations(sources: list[Path]) -> list[str]:
    found: list[str] = []
    for folder in sources:
        for path in sorted(folder.rglob("*.py")):
            if path.is_relative_to(OWNER) or any(path.is_relative_to(e) for e in EXEMPT):
                continue
            if path.name == "guards.py" and path.parent.name == "store":
                continue  # defines owner_writes
            found += violations_in(path, path.read_text())
    return found


def test_only_the_lifecycle_writes_run_call_and_thread_state():
    assert {"Run", "AgentCall", "Thread", "ThreadEvent", "OrchestrationDecision"} == OWNED_MODELS
    assert {"status", "cancel_requested", "active_run_id", "event_count"} <= STATE_COLUMNS
    assert all(folder.is_dir() for folder in SOURCES) and len(SOURCES) == 5
    assert violations(SOURCES) == []


def test_the_check_catches_each_kind_of_foreign_write(tmp_path):
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    (leaky / "route.py").write_text(
        "from sqlalchemy import update\n"
        "from podium.store import Run, Thread, Agent\n"
        "from podium.store.guards import owner_writes\n"
        "def cancel(session, run):\n"
        "    run.cancel_requested = True\n"
        "    session.execute(update(Run).where(Run.id == run.id).values(status='x'))\n"
        "    session.add(Thread(title='t'))\n"
        "    append_event(session, thread_id='t')\n"
        "    call.status, other.status = 'failed', 'fine'\n"
        "    session.execute(update(Agent).values(name='fine'))\n"
        "    result.status = 'fine'\n"
        "    threading.Thread(target=print).start()\n"
        "    session.add(models.ThreadEvent(seq=1))\n"
    )
    assert violations([leaky]) == [
        "route.py:3 imports owner_writes",
        "route.py:5 assigns run.cancel_requested",
        "route.py:6 update(Run)",
        "route.py:7 creates a Thread",
        "route.py:8 calls append_event",
        "route.py:9 assigns call.status",
        "route.py:13 creates a ThreadEvent",
    ]
