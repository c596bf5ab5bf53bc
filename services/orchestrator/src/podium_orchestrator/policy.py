"""What the learner's statistics say at decision time (DESIGN §4): guidance text for the
Orchestrator agent's prompt, and the learned policy that overrules a pattern with a
demonstrated poor record (enough samples, lower credible bound under the threshold) in favour
of the best-recorded alternative."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.learning import Posterior
from podium.store import LearningStat, PostMortem, RunOutcome

MAX_LESSONS = 3


@dataclass(frozen=True)
class Overrule:
    from_pattern: str
    to_pattern: str
    rationale: str


def class_stats(session: Session, tenant_id: str, request_class: str) -> list[LearningStat]:
    return list(
        session.scalars(
            select(LearningStat)
            .where(LearningStat.tenant_id == tenant_id, LearningStat.request_class == request_class)
            .order_by(LearningStat.dimension, LearningStat.value)
        )
    )


def _line(stat: LearningStat) -> str:
    post = Posterior(stat.good, stat.samples)
    rating = f", mean rating {stat.mean_rating:.1f}" if stat.mean_rating is not None else ""
    record = f"{stat.good}/{stat.samples} good (lower bound {post.lower_bound:.2f})"
    return f"{stat.dimension} {stat.value}: {record}{rating}"


def guidance(
    session: Session, tenant_id: str, request_class: str, stats: list[LearningStat]
) -> str:
    """A few lines for the prompt: the record of each pattern and agent for this class, and
    the newest lessons of post-mortems of this class."""
    if not stats:
        return ""
    lines = [f"For {request_class} requests:"] + [f"- {_line(s)}" for s in stats[:12]]
    lessons = session.scalars(
        select(PostMortem.review)
        .join(RunOutcome, RunOutcome.run_id == PostMortem.run_id)
        .where(RunOutcome.tenant_id == tenant_id, RunOutcome.request_class == request_class)
        .order_by(PostMortem.created_at.desc())
        .limit(10)
    ).all()
    seen: list[str] = []
    for review in lessons:
        for lesson in (review or {}).get("lessons", []) or []:
            if lesson not in seen:
                seen.append(str(lesson))
    if seen:
        lines.append("Lessons from post-mortems:")
        lines += [f"- {lesson}" for lesson in seen[:MAX_LESSONS]]
    return "\n".join(lines)[:1500]


def overrule(
    stats: Iterable[LearningStat],
    chosen: str,
    available: list[str],
    *,
    min_samples: int,
    threshold: float,
) -> Overrule | None:
    patterns = {s.value: Posterior(s.good, s.samples) for s in stats if s.dimension == "pattern"}
    record = patterns.get(chosen)
    if record is None or record.samples < min_samples or record.lower_bound >= threshold:
        return None

    def poor(name: str) -> bool:
        p = patterns.get(name)
        return p is not None and p.samples >= min_samples and p.lower_bound < threshold

    # Unexplored patterns score their prior mean (0.5); ties keep the configured order.
    candidates = [p for p in available if p != chosen and not poor(p)]
    if not candidates:
        return None
    best = max(
        candidates, key=lambda p: (patterns[p].mean if p in patterns else 0.5, -available.index(p))
    )
    best_record = patterns.get(best)
    evidence = (
        f"{best_record.good}/{best_record.samples} good (mean {best_record.mean:.2f})"
        if best_record
        else "no record yet (prior mean 0.50)"
    )
    return Overrule(
        chosen,
        best,
        (
            f"Learned policy: '{chosen}' has a poor record for this tenant and request class: "
            f"{record.good}/{record.samples} good, lower credible bound {record.lower_bound:.2f} "
            f"< {threshold:.2f}. Chose '{best}' instead: {evidence}."
        ),
    )
