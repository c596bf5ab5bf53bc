"""``podium dlq``: inspect and replay dead letters (messages no consumer could apply)."""

from __future__ import annotations

import json

import click
from sqlalchemy import select

from podium.queues import AGENTS_QUEUE_PREFIX, Queue
from podium.settings import get_settings
from podium.store import Database, DeadLetter, OutboxMessage, new_id, utcnow


@click.group()
def dlq() -> None:
    """Dead letters, from the store of PODIUM_DATABASE_URL."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Include replayed ones.")
@click.option("--json", "as_json", is_flag=True)
def list_(limit: int, show_all: bool, as_json: bool) -> None:
    """The newest dead letters."""
    db = Database(get_settings(), pool_size=1)
    try:
        with db.session() as session:
            query = select(DeadLetter).order_by(DeadLetter.created_at.desc()).limit(limit)
            if not show_all:
                query = query.where(DeadLetter.replayed_at.is_(None))
            rows = session.scalars(query).all()
            items = [
                {
                    "id": r.id,
                    "created_at": r.created_at.isoformat(),
                    "task": r.task,
                    "queue": r.queue,
                    "reason": r.reason,
                    "error": r.error,
                    "replayed_at": r.replayed_at.isoformat() if r.replayed_at else None,
                    "payload": r.payload,
                }
                for r in rows
            ]
    finally:
        db.dispose()
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no dead letters")
    for i in items:
        click.echo(
            f"{i['id']}  {i['created_at'][:19]}  {i['reason']:<12} {i['task']}  {i['error'][:100]}"
        )


@dlq.command("replay")
@click.argument("dead_letter_id")
@click.option("--queue", default=None, help="Send to this queue instead of the original one.")
def replay(dead_letter_id: str, queue: str | None) -> None:
    """Send a dead letter's payload again (after fixing its cause)."""
    settings = get_settings()
    db = Database(settings, pool_size=1)
    try:
        with db.session() as session:
            row = session.get(DeadLetter, dead_letter_id)
            if row is None:
                raise click.ClickException(f"no dead letter {dead_letter_id!r}")
            target = queue or row.queue
            if not target or not (
                target in {q.value for q in Queue} or target.startswith(AGENTS_QUEUE_PREFIX)
            ):
                raise click.ClickException(
                    f"no valid queue to replay to ({target!r}); pass --queue"
                )
            # Through the outbox, as every message: the orchestrator's sweep publishes it.
            session.add(
                OutboxMessage(id=new_id(), task=row.task, queue=target, payload=row.payload)
            )
            row.replayed_at = utcnow()
            click.echo(
                f"replayed {row.id} ({row.task}) to {target}: in the outbox, published by "
                f"the orchestrator's sweep within about {settings.outbox_sweep_s + 5:.0f} s"
            )
    finally:
        db.dispose()
