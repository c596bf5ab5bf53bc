"""``podium``: run Podium (dev, up, down, migrate) and talk to a running gateway."""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any

import click

from podium.client import PodiumAPIError, PodiumClient
from podium.settings import Settings, get_settings


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's message names the bad variable
        raise click.ClickException(f"invalid configuration: {exc}") from exc


def _client(key: str | None, url: str | None) -> PodiumClient:
    settings = _settings()
    return PodiumClient(url or settings.url, key)


def _fail_api(exc: PodiumAPIError) -> None:
    raise click.ClickException(f"{exc.code}: {exc.message} (HTTP {exc.status})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Podium: LLM agents for many tenants, orchestrated by an LLM."""


@cli.command()
@click.option("--host", default=None, help="Bind address (default PODIUM_HTTP_HOST).")
@click.option("--port", type=int, default=None, help="Port (default PODIUM_HTTP_PORT).")
@click.option(
    "--workers",
    "worker_threads",
    type=int,
    default=16,
    show_default=True,
    help="Worker threads for orchestration and agent calls.",
)
def dev(host: str | None, port: int | None, worker_threads: int) -> None:
    """Run everything in one process: SQLite, in-process broker, no Redis or PostgreSQL."""
    import uvicorn

    from podium.embedded import EmbeddedPodium
    from podium.process import prepare_process

    settings = _settings()
    generated = settings.admin_key is None
    if generated:
        settings = settings.model_copy(update={"admin_key": "dev-" + secrets.token_urlsafe(24)})
    prepare_process(settings)
    podium = EmbeddedPodium(settings, worker_threads=worker_threads)
    podium.migrate()
    podium.start_workers()
    host = host or settings.http_host
    port = port or settings.http_port
    click.echo(f"Podium (embedded) on http://{host}:{port}  — docs at /docs")
    click.echo(
        f"  store: {podium.settings.database_url}  broker: in-process  "
        f"provider: {settings.llm_provider}"
    )
    if generated:
        click.echo(f"  admin key (generated for this session): {settings.admin_key}")
    sys.stdout.flush()
    try:
        uvicorn.run(podium.asgi_app(), host=host, port=port, log_level="warning", access_log=False)
    finally:
        podium.stop()


@cli.command()
@click.option("--create-db", is_flag=True, help="Create the PostgreSQL database if it is missing.")
def migrate(create_db: bool) -> None:
    """Apply the store's migrations to PODIUM_DATABASE_URL."""
    from podium.store.db import make_engine
    from podium.store.migrate import upgrade
    from podium.store.provision import ensure_database

    settings = _settings()
    if create_db:
        ensure_database(settings.database_url)
    engine = make_engine(settings)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    click.echo(f"migrated {engine.url.render_as_string(hide_password=True)} to head")


@cli.group()
def tenant() -> None:
    """Tenants (needs the admin key)."""


@tenant.command("create")
@click.argument("name")
@click.option("--admin-key", envvar="PODIUM_ADMIN_KEY", help="Default: PODIUM_ADMIN_KEY.")
@click.option("--url", default=None, help="Gateway URL (default PODIUM_URL).")
@click.option("--with-key", is_flag=True, help="Also issue an API key for the new tenant.")
def tenant_create(name: str, admin_key: str | None, url: str | None, with_key: bool) -> None:
    """Create a tenant (with the default agent roster)."""
    if not admin_key:
        raise click.ClickException("the admin key is needed: set PODIUM_ADMIN_KEY or --admin-key")
    with _client(admin_key, url) as client:
        try:
            created = client.create_tenant(name)
            click.echo(f"tenant {created['id']} ({created['name']})")
            if with_key:
                key = client.create_key(created["id"])
                click.echo(f"api key (shown once): {key['key']}")
        except PodiumAPIError as exc:
            _fail_api(exc)


@cli.group()
def key() -> None:
    """API keys (needs the admin key)."""


@key.command("create")
@click.argument("tenant_id")
@click.option("--name", default=None, help="A label for the key.")
@click.option("--admin-key", envvar="PODIUM_ADMIN_KEY", help="Default: PODIUM_ADMIN_KEY.")
@click.option("--url", default=None, help="Gateway URL (default PODIUM_URL).")
def key_create(tenant_id: str, name: str | None, admin_key: str | None, url: str | None) -> None:
    """Issue an API key for TENANT_ID. The key is printed once; it is stored hashed."""
    if not admin_key:
        raise click.ClickException("the admin key is needed: set PODIUM_ADMIN_KEY or --admin-key")
    with _client(admin_key, url) as client:
        try:
            created = client.create_key(tenant_id, name)
        except PodiumAPIError as exc:
            _fail_api(exc)
        click.echo(created["key"])


@cli.group()
def thread() -> None:
    """Threads (needs a tenant API key)."""


@thread.command("create")
@click.option("--title", default=None)
@click.option("--api-key", envvar="PODIUM_API_KEY", help="Default: PODIUM_API_KEY.")
@click.option("--url", default=None, help="Gateway URL (default PODIUM_URL).")
def thread_create(title: str | None, api_key: str | None, url: str | None) -> None:
    """Create a thread and print its id."""
    if not api_key:
        raise click.ClickException("an API key is needed: set PODIUM_API_KEY or --api-key")
    with _client(api_key, url) as client:
        try:
            click.echo(client.create_thread(title)["id"])
        except PodiumAPIError as exc:
            _fail_api(exc)


def print_decisions(orchestration: dict[str, Any]) -> None:
    for d in orchestration["decisions"]:
        dims = d["dimensions"]
        fallback = f", fallback: {d['fallback']}" if d.get("fallback") else ""
        click.echo(
            f"  decision #{d['seq']} [{d['source']}{fallback}]: pattern={dims.get('pattern')} "
            f"agent={dims.get('agent')} team={dims.get('team')}"
        )
        click.echo(f"    why: {d['rationale']}")


@cli.command()
@click.argument("prompt")
@click.option("--thread", "thread_id", default=None, help="Thread id (default: a new thread).")
@click.option("--agent", default=None, help="Ask a specific agent.")
@click.option("--pattern", default=None, help="Force a pattern.")
@click.option("--api-key", envvar="PODIUM_API_KEY", help="Default: PODIUM_API_KEY.")
@click.option("--url", default=None, help="Gateway URL (default PODIUM_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the final run as JSON.")
def run(
    prompt: str,
    thread_id: str | None,
    agent: str | None,
    pattern: str | None,
    api_key: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Submit PROMPT, show its events live, then print the answer and the decision."""
    if not api_key:
        raise click.ClickException("an API key is needed: set PODIUM_API_KEY or --api-key")
    with _client(api_key, url) as client:
        try:
            if thread_id is None:
                thread_id = client.create_thread(prompt[:60])["id"]
            accepted = client.create_run(thread_id, prompt, agent=agent, pattern=pattern)
            run_id = accepted["id"]
            click.echo(f"run {run_id} on thread {thread_id}: {accepted['status']}", err=True)
            streaming = False
            for event in client.events(run_id):
                if event.event == "agent_call.delta":
                    click.echo(event.data.get("text", ""), nl=False, err=True)
                    streaming = True
                    continue
                if streaming:
                    click.echo("", err=True)
                    streaming = False
                click.echo(f"[{event.event}] {_summary(event.event, event.data)}", err=True)
            final = client.get_run(run_id)
            orchestration = client.orchestration(run_id)
        except PodiumAPIError as exc:
            _fail_api(exc)
    if as_json:
        click.echo(
            json.dumps({"run": final, "orchestration": orchestration}, indent=2, default=str)
        )
        return
    click.echo(f"status: {final['status']}")
    if final.get("error"):
        click.echo(f"error: {final['error']}")
    click.echo(f"answer: {final.get('output') or ''}")
    print_decisions(orchestration)
    if final["status"] != "completed":
        sys.exit(1)


def _summary(kind: str, data: dict[str, Any]) -> str:
    if kind == "decision":
        dims = data.get("dimensions", {})
        return f"{dims.get('pattern')} → {dims.get('agent')} ({data.get('source')})"
    if kind.startswith("agent_call."):
        extra = data.get("usage") or data.get("error") or ""
        return f"{data.get('agent', '')} {data.get('call_id', '')} {extra}".strip()
    if kind.startswith("run."):
        return str(data.get("status", ""))
    return ""


def _register_extra_commands() -> None:
    from podium.cli.agents import agents
    from podium.cli.dashboards import dashboards
    from podium.cli.demo import demo
    from podium.cli.dlq import dlq
    from podium.cli.learner import learner
    from podium.cli.local import down, up

    cli.add_command(agents)
    cli.add_command(dashboards)
    cli.add_command(learner)
    cli.add_command(dlq)
    cli.add_command(up)
    cli.add_command(down)
    cli.add_command(demo)


_register_extra_commands()
