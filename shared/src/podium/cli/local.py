"""``podium up`` / ``podium down`` (``make up`` / ``make down``): every service as its own
process against the Redis and PostgreSQL named in the environment, with logs and pids in a
run folder."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

from podium.settings import get_settings


@dataclass(frozen=True)
class Proc:
    name: str
    module: str
    metrics_port: int


PROCESSES = (
    Proc("gateway", "podium_gateway", 0),
    Proc("orchestrator", "podium_orchestrator", 9101),
    Proc("agent-worker", "podium_agent_worker", 9102),
    Proc("learner", "podium_learner", 9103),
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _pid(run_dir: Path, name: str) -> int | None:
    path = run_dir / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _wait_http(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


@click.command()
@click.option("--run-dir", default=".run", show_default=True, type=click.Path(path_type=Path))
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for readiness.")
def up(run_dir: Path, timeout: float) -> None:
    """Start gateway, orchestrator, agent-worker and learner as separate processes."""
    from podium.store.db import make_engine
    from podium.store.migrate import upgrade
    from podium.store.provision import ensure_database

    settings = get_settings()
    run_dir.mkdir(parents=True, exist_ok=True)
    running = [p.name for p in PROCESSES if _pid(run_dir, p.name)]
    if running:
        raise click.ClickException(
            f"already running: {', '.join(running)} (pids in {run_dir}); run `make down` first"
        )
    env = dict(os.environ)
    admin_key = settings.admin_key
    if admin_key is None:
        key_file = run_dir / "admin_key"
        admin_key = key_file.read_text().strip() if key_file.exists() else secrets.token_urlsafe(24)
        key_file.write_text(admin_key)
        key_file.chmod(0o600)
        env["PODIUM_ADMIN_KEY"] = admin_key
        click.echo(f"PODIUM_ADMIN_KEY was not set; using the key in {key_file}")
    click.echo(f"store: {make_engine(settings).url.render_as_string(hide_password=True)}")
    click.echo(f"broker: {settings.effective_broker_url}   events: {settings.redis_url}")
    if ensure_database(settings.database_url):
        click.echo("created the database")
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    click.echo("migrations applied")
    for proc in PROCESSES:
        proc_env = dict(env)
        if proc.metrics_port:
            proc_env["PODIUM_METRICS_PORT"] = str(proc.metrics_port)
        log = (run_dir / f"{proc.name}.log").open("ab")
        child = subprocess.Popen(
            [sys.executable, "-m", proc.module],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=proc_env,
            start_new_session=True,  # survives `make up` returning
        )
        (run_dir / f"{proc.name}.pid").write_text(str(child.pid))
        click.echo(f"started {proc.name} (pid {child.pid}, log {run_dir / (proc.name + '.log')})")
    deadline = time.monotonic() + timeout
    gateway = f"http://{settings.http_host}:{settings.http_port}"
    checks = [("gateway", f"{gateway}/readyz")] + [
        (p.name, f"http://127.0.0.1:{p.metrics_port}/metrics") for p in PROCESSES if p.metrics_port
    ]
    for name, url in checks:
        if not _wait_http(url, deadline):
            dead = [p.name for p in PROCESSES if not _pid(run_dir, p.name)]
            raise click.ClickException(
                f"{name} did not become ready in {timeout:.0f}s"
                + (f"; exited: {', '.join(dead)}" if dead else "")
                + f"; see {run_dir}/*.log"
            )
        click.echo(f"{name}: ready")
    click.echo(f"Podium is up: {gateway}  (admin key: PODIUM_ADMIN_KEY; stop with `make down`)")


@click.command()
@click.option("--run-dir", default=".run", show_default=True, type=click.Path(path_type=Path))
@click.option("--grace", default=20.0, show_default=True, help="Seconds before SIGKILL.")
def down(run_dir: Path, grace: float) -> None:
    """Stop the processes started by `podium up` (SIGTERM, then SIGKILL after --grace)."""
    stopped = 0
    for proc in PROCESSES:
        pid = _pid(run_dir, proc.name)
        if pid is None:
            (run_dir / f"{proc.name}.pid").unlink(missing_ok=True)
            continue
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            click.echo(f"{proc.name} (pid {pid}) killed after {grace:.0f}s")
        else:
            click.echo(f"{proc.name} (pid {pid}) stopped")
        (run_dir / f"{proc.name}.pid").unlink(missing_ok=True)
        stopped += 1
    if not stopped:
        click.echo("nothing was running")
