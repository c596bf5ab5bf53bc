"""``podium agents``: list the tenant's agents and import Coday agent definitions."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from podium.client import PodiumAPIError, PodiumClient
from podium.coday import CodayImportError, coday_to_agent, load_agents_yaml

API_KEY_OPTION = click.option("--api-key", envvar="PODIUM_API_KEY", help="Default: PODIUM_API_KEY.")
URL_OPTION = click.option("--url", default=None, help="Gateway URL (default PODIUM_URL).")


def _client(api_key: str | None, url: str | None) -> PodiumClient:
    if not api_key:
        raise click.ClickException("an API key is needed: set PODIUM_API_KEY or --api-key")
    if url is None:
        from podium.settings import get_settings

        try:
            url = get_settings().url
        except Exception as exc:  # pydantic's message names the bad variable
            raise click.ClickException(f"invalid configuration: {exc}") from exc
    return PodiumClient(url, api_key)


def _api_message(exc: PodiumAPIError) -> str:
    return f"{exc.code}: {exc.message} (HTTP {exc.status})"


def _echo_warnings(agent: dict[str, Any]) -> None:
    # The gateway checks against the deployment's configuration, which this machine's
    # environment says nothing about: its warnings are the ones that count.
    for warning in agent.get("warnings") or []:
        click.echo(f"warning: {warning.get('message') or warning.get('code')}", err=True)


@click.group()
def agents() -> None:
    """The tenant's agent definitions (needs a tenant API key)."""


@agents.command("list")
@API_KEY_OPTION
@URL_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the definitions as JSON.")
def list_command(api_key: str | None, url: str | None, as_json: bool) -> None:
    """List the tenant's agents."""
    with _client(api_key, url) as client:
        try:
            rows = client.list_agents()
        except PodiumAPIError as exc:
            raise click.ClickException(_api_message(exc)) from exc
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    llms = [
        "/".join(x for x in (a.get("provider"), a.get("model")) if x) or "default" for a in rows
    ]
    name_width = max((len(a["name"]) for a in rows), default=4)
    llm_width = max(map(len, llms), default=7)
    for a, llm in zip(rows, llms, strict=True):
        tools = ",".join(a.get("tools") or []) or "-"
        click.echo(
            f"{a['name']:<{name_width}}  {llm:<{llm_width}}  tools={tools}  "
            f"{a.get('description', '')}"
        )
    for a in rows:
        _echo_warnings(a)


@dataclass
class _Planned:
    name: str
    body: dict[str, Any]
    deferred: bool = False  # first PUT without some sub_agents; the full body follows
    outcome: str | None = None  # "created" | "replaced"
    error: str | None = None
    stored: dict[str, Any] = field(default_factory=dict)  # the gateway's answer to the PUT
    deps: set[str] = field(default_factory=set)


def _order(planned: list[_Planned]) -> list[tuple[_Planned, dict[str, Any]]]:
    """PUT steps so that every sub-agent exists before an agent naming it. Agents in a cycle
    are first PUT with only the sub-agents that already exist, then again in full."""
    in_file = {p.name for p in planned}
    for p in planned:
        p.deps = (set(p.body.get("sub_agents") or []) & in_file) - {p.name}
    steps: list[tuple[_Planned, dict[str, Any]]] = []
    done: set[str] = set()
    pending = list(planned)
    while pending:
        ready = next((p for p in pending if p.deps <= done), None)
        if ready is None:  # a cycle: break it at the first pending agent
            ready = pending[0]
            ready.deferred = True
            partial = dict(ready.body)
            partial["sub_agents"] = [
                n for n in ready.body["sub_agents"] if n not in ready.deps or n in done
            ]
            steps.append((ready, partial))
        else:
            steps.append((ready, ready.body))
        done.add(ready.name)
        pending.remove(ready)
    steps += [(p, p.body) for p in planned if p.deferred]
    return steps


@agents.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@API_KEY_OPTION
@URL_OPTION
@click.option("--dry-run", is_flag=True, help="Convert and check, but change nothing.")
def import_command(file: Path, api_key: str | None, url: str | None, dry_run: bool) -> None:
    """Create or replace agents from a Coday agent YAML FILE.

    FILE holds one agent, a list of agents, or a mapping with an `agents:` list. Coday fields
    (aiProvider, modelName, maxOutputTokens, integrations...) and Podium's own (provider,
    model, max_output_tokens, tools, sub_agents, pool) are both understood. Integrations and
    tools Podium does not have are reported as warnings, and so is an agent whose provider
    has no credentials in the deployment (it is stored all the same; --dry-run cannot tell,
    as the gateway checks that when the agent is written). Exits non-zero if any agent failed.
    """
    try:
        docs = load_agents_yaml(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from exc
    except CodayImportError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    if not docs:
        raise click.ClickException(f"{file}: no agent definitions found")

    planned: list[_Planned] = []
    failed: list[str] = []
    seen: set[str] = set()
    for index, doc in enumerate(docs):
        try:
            name, body, warnings = coday_to_agent(doc)
        except CodayImportError as exc:
            failed.append(f"#{index + 1}")
            click.echo(f"failed   {exc}")
            continue
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        if name in seen:
            failed.append(name)
            click.echo(f"failed   {name}: defined more than once in {file}")
            continue
        seen.add(name)
        planned.append(_Planned(name, body))

    with _client(api_key, url) as client:
        try:
            existing = {a["name"] for a in client.list_agents()}
        except PodiumAPIError as exc:
            raise click.ClickException(_api_message(exc)) from exc
        if dry_run:
            for p in planned:
                verb = "replace" if p.name in existing else "create"
                click.echo(f"would {verb} {p.name}: {json.dumps(p.body, sort_keys=True)}")
            creates = sum(p.name not in existing for p in planned)
            click.echo(
                f"dry run: {creates} to create, {len(planned) - creates} to replace, "
                f"{len(failed)} invalid"
            )
            if failed:
                sys.exit(1)
            return
        for p, body in _order(planned):
            if p.error is not None:
                continue
            try:
                p.stored = client.put_agent(p.name, body)
            except PodiumAPIError as exc:
                p.error = _api_message(exc)
            else:
                if p.outcome is None:
                    p.outcome = "replaced" if p.name in existing else "created"
                    existing.add(p.name)
            if p.error is not None or not p.deferred or body is p.body:
                if p.error is not None:
                    failed.append(p.name)
                    click.echo(f"failed   {p.name}: {p.error}")
                else:
                    click.echo(f"{p.outcome:<8} {p.name}")
                    _echo_warnings(p.stored)

    created = sum(p.outcome == "created" and p.error is None for p in planned)
    replaced = sum(p.outcome == "replaced" and p.error is None for p in planned)
    click.echo(f"{created} created, {replaced} replaced, {len(failed)} failed")
    if failed:
        sys.exit(1)
