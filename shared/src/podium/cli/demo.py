"""``podium demo`` (``make demo``): start Podium in its embedded mode, push sample requests
through the HTTP API, and print what happened."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx

from podium.client import PodiumClient

SAMPLES: list[dict[str, Any]] = [
    {"title": "Getting started", "prompt": "What can a platform team do with Podium?"},
    {"title": "Code", "prompt": "@coder write a function that reverses the words of a sentence"},
    {
        "title": "Code",
        "prompt": "Now make it keep punctuation attached to its word",
        "same_thread": True,
    },
    {"title": "Review", "prompt": "Please review this retry policy: 3 attempts, no jitter."},
    {"title": "Compare", "prompt": "Compare Redis Streams and RabbitMQ for our event bus."},
    {"title": "Plan", "prompt": "Plan the steps to move our workers to a threads pool."},
    {
        "title": "Pipeline",
        "prompt": "Explain idempotency keys to a new engineer.",
        "pattern": "pipeline",
    },
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _podium_command() -> list[str]:
    script = Path(sys.executable).with_name("podium")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from podium.cli.main import cli; cli()"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"podium dev exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"podium dev was not ready after {timeout:.0f}s")


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo's SQLite file and print its path.")
def demo(keep: bool) -> None:
    """Run the embedded Podium, send sample runs over HTTP, and show answers and decisions."""
    workdir = Path(tempfile.mkdtemp(prefix="podium-demo-"))
    port = _free_port()
    admin_key = "demo-" + secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env.update(
        {
            "PODIUM_DATABASE_URL": f"sqlite:///{workdir / 'podium.db'}",
            "PODIUM_ADMIN_KEY": admin_key,
            "PODIUM_HTTP_PORT": str(port),
            "PODIUM_LLM_PROVIDER": "simulated",
            "PODIUM_SIMULATED_LATENCY_MS": "150",
            "PODIUM_LOG_LEVEL": "WARNING",
        }
    )
    url = f"http://127.0.0.1:{port}"
    click.echo(
        f"Starting Podium in embedded mode (SQLite in {workdir}, in-process broker) on {url}"
    )
    log = (workdir / "podium-dev.log").open("wb")
    proc = subprocess.Popen(
        [*_podium_command(), "dev"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_ready(url, proc)
        _run_samples(url, admin_key)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    if keep:
        click.echo(f"kept: {workdir}")
    click.echo("Demo finished: every sample run completed.")


def _run_samples(url: str, admin_key: str) -> None:
    with PodiumClient(url, admin_key) as admin:
        tenant = admin.create_tenant("demo-tenant")
        key = admin.create_key(tenant["id"], "demo")["key"]
    click.echo(f"Created tenant {tenant['id']} and an API key (stored hashed).\n")
    failures = 0
    with PodiumClient(url, key) as client:
        thread_id: str | None = None
        for n, sample in enumerate(SAMPLES, 1):
            if thread_id is None or not sample.get("same_thread"):
                thread_id = client.create_thread(sample["title"])["id"]
            accepted = client.create_run(
                thread_id,
                sample["prompt"],
                agent=sample.get("agent"),
                pattern=sample.get("pattern"),
            )
            counts: dict[str, int] = {}
            calls: list[str] = []
            for event in client.events(accepted["id"]):
                counts[event.event] = counts.get(event.event, 0) + 1
                if event.event == "agent_call.queued":
                    calls.append(f"{event.data.get('role')}:{event.data.get('agent')}")
            run = client.get_run(accepted["id"])
            _print_run(n, sample, run, client.orchestration(accepted["id"]), calls, counts)
            pm = _wait_postmortem(client, accepted["id"])
            if pm:
                facts = pm["facts"]
                click.echo(
                    f"   learner post-mortem: {facts['status']}, {facts['agent_calls']} call(s), "
                    f"latency {facts['latency_ms']} ms"
                )
            click.echo("")
            failures += run["status"] != "completed"
    if failures:
        raise click.ClickException(f"{failures} sample run(s) did not complete")


def _print_run(
    n: int,
    sample: dict[str, Any],
    run: dict[str, Any],
    orchestration: dict[str, Any],
    calls: list[str],
    counts: dict[str, int],
) -> None:
    extras = ", ".join(f"{k}={sample[k]}" for k in ("agent", "pattern") if sample.get(k))
    click.echo(f"── Sample {n}: {sample['prompt']!r}" + (f" ({extras})" if extras else ""))
    usage = run["usage"]
    click.echo(
        f"   status: {run['status']}   agent tokens in/out: {usage['input_tokens']}/"
        f"{usage['output_tokens']}   orchestrator tokens: {usage['orchestrator_tokens']}   "
        f"cost: ${usage['cost_usd']:.6f} (nominal simulated prices)"
    )
    for d in orchestration["decisions"]:
        dims = d["dimensions"]
        more = "".join(f", {k}={dims[k]}" for k in ("team", "action") if dims.get(k))
        click.echo(
            f"   decision #{d['seq']} ({d['source']}, {d['input_tokens']} tokens in): "
            f"pattern={dims['pattern']}, agent={dims['agent']}{more}"
        )
        click.echo(f"     rationale: {d['rationale']}")
    click.echo(f"   agent calls: {' → '.join(calls) or 'none'}")
    click.echo("   provider: simulated (deterministic, offline — not a real LLM)")
    answer = " ".join((run["output"] or "").split())
    click.echo(f"   answer: {answer if len(answer) < 300 else answer[:300] + ' […]'}")
    click.echo(f"   events streamed: {', '.join(f'{k} x{v}' for k, v in sorted(counts.items()))}")


def _wait_postmortem(
    client: PodiumClient, run_id: str, timeout: float = 10
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pm = client.orchestration(run_id).get("postmortem")
        if pm:
            return dict(pm)
        time.sleep(0.1)
    return None
