"""Request classes and the statistics the learner keeps (docs/architecture.md, "Learning"), shared
by the learner (which writes them), the orchestrator (guidance and the learned policy) and the
gateway (insights).

A run's outcome is "good" when its users rated it well (mean ≥ 3.5 of 5), "bad" when they
rated it poorly (≤ 2.5), and otherwise when it completed. Each tenant x class x pattern (or
agent) keeps a Beta(1 + good, 1 + bad) posterior; the policy compares its lower credible
bound with a threshold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

REQUEST_CLASSES: tuple[str, ...] = (
    "coding",
    "planning",
    "review",
    "comparison",
    "research",
    "question",
    "chat",
)

# Deterministic fallback classifier: the first class whose words appear wins.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("review", r"\b(review|double-check|critique|proofread|audit)\b"),
        ("comparison", r"\b(compare|comparison|versus|vs\.?|pros and cons|trade-?offs?)\b"),
        ("planning", r"\b(plan|steps|roadmap|migrate|migration|rollout|roll out)\b"),
        ("coding", r"\b(code|function|bug|refactor|python|sql|script|regex|api|compile)\b|```"),
        ("research", r"\b(research|sources|evidence|find out|facts?|investigate)\b"),
        ("question", r"\?\s*$|^\s*(what|why|how|when|where|who|which|is|are|can|does)\b"),
    )
)


def classify(text: str) -> str:
    for name, pattern in _RULES:
        if pattern.search(text):
            return name
    return "chat"


def rating_verdict(mean_rating: float | None) -> bool | None:
    """True for good, False for bad, None when the ratings are neutral or absent."""
    if mean_rating is None:
        return None
    if mean_rating >= 3.5:
        return True
    if mean_rating <= 2.5:
        return False
    return None


def is_good(status: str, mean_rating: float | None) -> bool:
    verdict = rating_verdict(mean_rating)
    return verdict if verdict is not None else status == "completed"


Z_95 = 1.6449  # one-sided 95%


@dataclass(frozen=True)
class Posterior:
    good: int
    samples: int

    @property
    def alpha(self) -> float:
        return 1.0 + self.good

    @property
    def beta(self) -> float:
        return 1.0 + (self.samples - self.good)

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def lower_bound(self) -> float:
        """Lower 95% credible bound (normal approximation to the Beta, clipped to [0, 1])."""
        a, b = self.alpha, self.beta
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        return max(0.0, min(1.0, self.mean - Z_95 * sd))
