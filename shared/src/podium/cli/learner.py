"""``podium learner report``: per-tenant tables of pattern and agent effectiveness, how often
the learned policy overruled the Orchestrator agent, and outcomes before and after."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.decisions import Decision, DecisionSource
from podium.learning import Posterior
from podium.settings import get_settings
from podium.store import Database, LearningStat, OrchestrationDecision, RunOutcome, Tenant


def _rate(good: int, n: int) -> str:
    return f"{100 * good / n:5.1f}%" if n else "    -"


def _policy_effect(outcomes: list[RunOutcome], overrules: list[Decision]) -> list[dict[str, Any]]:
    """Per request class with overrules: good rate before the first overrule, and after."""
    first: dict[str, datetime] = {}
    for d in overrules:
        assert d.created_at is not None  # read from the store
        cls = str(d.dimensions.request_class)
        first[cls] = min(first.get(cls, d.created_at), d.created_at)
    rows = []
    for cls, since in sorted(first.items()):
        of_class = [o for o in outcomes if o.request_class == cls]
        before = [o for o in of_class if o.created_at < since]
        after = [o for o in of_class if o.created_at >= since]
        rows.append(
            {
                "request_class": cls,
                "overrules": sum(1 for d in overrules if d.dimensions.request_class == cls),
                "before": {"runs": len(before), "good": sum(o.good for o in before)},
                "after": {"runs": len(after), "good": sum(o.good for o in after)},
            }
        )
    return rows


def tenant_report(session: Session, tenant: Tenant) -> dict[str, Any]:
    stats = session.scalars(
        select(LearningStat)
        .where(LearningStat.tenant_id == tenant.id)
        .order_by(LearningStat.request_class, LearningStat.dimension, LearningStat.samples.desc())
    ).all()
    overrules = [
        Decision.from_row(row)
        for row in session.scalars(
            select(OrchestrationDecision).where(
                OrchestrationDecision.tenant_id == tenant.id,
                OrchestrationDecision.source == DecisionSource.POLICY.value,
            )
        )
    ]
    outcomes = session.scalars(
        select(RunOutcome).where(RunOutcome.tenant_id == tenant.id).order_by(RunOutcome.created_at)
    ).all()
    table: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in stats:
        post = Posterior(s.good, s.samples)
        table[s.dimension].append(
            {
                "request_class": s.request_class,
                "value": s.value,
                "runs": s.samples,
                "good": s.good,
                "lower_bound": round(post.lower_bound, 3),
                "mean_rating": s.mean_rating,
                "mean_cost_usd": s.mean_cost_usd,
                "mean_latency_ms": s.mean_latency_ms,
            }
        )
    transitions: dict[str, int] = defaultdict(int)
    for d in overrules:
        transitions[f"{d.dimensions.overruled} → {d.dimensions.pattern}"] += 1
    return {
        "tenant": {"id": tenant.id, "name": tenant.name},
        "runs": len(outcomes),
        "patterns": table["pattern"],
        "agents": table["agent"],
        "policy": {
            "overrules": len(overrules),
            "transitions": dict(transitions),
            "effect": _policy_effect(list(outcomes), list(overrules)),
        },
    }


def _print(report: dict[str, Any]) -> None:
    t = report["tenant"]
    click.echo(f"\n== Tenant {t['name']} ({t['id']}) — {report['runs']} runs with outcomes")
    for title, key, label in (("Patterns", "patterns", "pattern"), ("Agents", "agents", "agent")):
        click.echo(f"\n{title} by request class")
        click.echo(
            f"  {'class':<11} {label:<14} {'runs':>5} {'good':>7} {'low.bnd':>7} {'rating':>6} "
            f"{'cost $':>9} {'latency':>9}"
        )
        for r in report[key]:
            rating = f"{r['mean_rating']:.2f}" if r["mean_rating"] is not None else "-"
            good = _rate(r["good"], r["runs"])
            click.echo(
                f"  {r['request_class']:<11} {r['value']:<14} {r['runs']:>5} {good:>7} "
                f"{r['lower_bound']:>7.2f} {rating:>6} {r['mean_cost_usd']:>9.6f} "
                f"{r['mean_latency_ms']:>7.0f}ms"
            )
        if not report[key]:
            click.echo("  (no outcomes yet)")
    policy = report["policy"]
    click.echo(f"\nLearned policy: {policy['overrules']} overrule(s)")
    for transition, count in policy["transitions"].items():
        click.echo(f"  {transition}: {count}")
    for e in policy["effect"]:
        b, a = e["before"], e["after"]
        click.echo(
            f"  {e['request_class']}: good before the first overrule {_rate(b['good'], b['runs'])} "
            f"of {b['runs']}; since {_rate(a['good'], a['runs'])} of {a['runs']}"
        )


@click.group()
def learner() -> None:
    """What the learner has learned (reads the store of PODIUM_DATABASE_URL)."""


@learner.command("report")
@click.option("--tenant", "tenant_id", default=None, help="One tenant (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(tenant_id: str | None, as_json: bool) -> None:
    """Pattern and agent effectiveness per tenant and request class, policy overrules, and
    outcomes before and after them."""
    db = Database(get_settings(), pool_size=2)
    try:
        with db.session() as session:
            query = select(Tenant).order_by(Tenant.created_at)
            if tenant_id:
                query = query.where(Tenant.id == tenant_id)
            tenants = session.scalars(query).all()
            if tenant_id and not tenants:
                raise click.ClickException(f"no tenant {tenant_id!r}")
            reports = [tenant_report(session, t) for t in tenants]
    finally:
        db.dispose()
    if as_json:
        click.echo(json.dumps(reports, indent=2, default=str))
        return
    for r in reports:
        _print(r)
