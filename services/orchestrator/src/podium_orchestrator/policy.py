"""What the learner's statistics say at decision time (docs/architecture.md, "Learning"):
guidance text for the Orchestrator agent's prompt, and the learned policy that overrules a
pattern with a demonstrated poor record (enough samples, lower credible bound under the
threshold) in favour of the best-recorded alternative."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from podium.learning import Posterior

MAX_LESSONS = 3


@dataclass(frozen=True)
class Overrule:
    from_pattern: str
    to_pattern: str
    rationale: str


@dataclass(frozen=True)
class Stat:
    """The learner's record of one pattern or agent for a tenant and request class."""

    dimension: str  # "pattern" or "agent"
    value: str
    good: int
    samples: int
    mean_rating: float | None = None


def _line(stat: Stat) -> str:
    post = Posterior(stat.good, stat.samples)
    rating = f", mean rating {stat.mean_rating:.1f}" if stat.mean_rating is not None else ""
    record = f"{stat.good}/{stat.samples} good (lower bound {post.lower_bound:.2f})"
    return f"{stat.dimension} {stat.value}: {record}{rating}"


def guidance_text(request_class: str, stats: list[Stat], lessons: list[str]) -> str:
    """A few lines for the prompt: the record of each pattern and agent for this class, and
    the newest lessons of post-mortems of this class."""
    if not stats:
        return ""
    lines = [f"For {request_class} requests:"] + [f"- {_line(s)}" for s in stats[:12]]
    if lessons:
        lines.append("Lessons from post-mortems:")
        lines += [f"- {lesson}" for lesson in lessons[:MAX_LESSONS]]
    return "\n".join(lines)[:1500]


def overrule(
    stats: Iterable[Stat],
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
