"""What an LLM call costs, from a price table per model (USD per 1M tokens).

The table ships as ``prices.yaml`` next to this module; ``PODIUM_PRICES_FILE`` replaces it.
Keys are exact model names or fnmatch globs, optionally provider-qualified
(``openai/gpt-4o``). Unknown models cost 0.0 and are reported with ``known=False``, so a
new model never breaks a run but budget checks can tell an estimate from a real figure.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PRICES_FILE = Path(__file__).with_name("prices.yaml")
_GLOB_CHARS = frozenset("*?[")
_PER = 1_000_000


class PriceConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Price:
    """USD per 1M input and output tokens; ``key`` is the table entry that matched."""

    input_per_mtok: float
    output_per_mtok: float
    key: str = ""

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / _PER


@dataclass(frozen=True)
class CostEstimate:
    usd: float
    # False when no table entry matched the model: usd is then 0.0, not a real figure.
    known: bool
    price: Price | None = None


class PriceTable:
    def __init__(self, entries: dict[str, Price], as_of: str | None = None) -> None:
        self.as_of = as_of
        # Lower-cased once; exact names and globs kept apart so exact names always win.
        self._exact: dict[str, Price] = {}
        self._globs: list[tuple[str, Price]] = []
        for key, price in entries.items():
            norm = key.strip().lower()
            if _GLOB_CHARS & set(norm):
                self._globs.append((norm, price))
            else:
                self._exact[norm] = price

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The table at ``path``; by default ``PODIUM_PRICES_FILE``, else the packaged one."""
        if path is None:
            from podium.settings import get_settings

            path = get_settings().prices_file
        return cls.from_file(path or DEFAULT_PRICES_FILE)

    @classmethod
    def default(cls) -> PriceTable:
        """The packaged table, whatever the environment says."""
        return cls.from_file(DEFAULT_PRICES_FILE)

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        source = Path(path)
        try:
            raw = yaml.safe_load(source.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PriceConfigError(f"cannot read prices file {source}: {exc}") from exc
        return cls.from_mapping(raw, source=str(source))

    @classmethod
    def from_mapping(cls, raw: Any, *, source: str = "<prices>") -> PriceTable:
        models = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(models, dict):
            raise PriceConfigError(f"{source}: expected a `models:` mapping")
        entries: dict[str, Price] = {}
        for key, body in models.items():
            entries[str(key)] = _parse_price(str(key), body, source)
        as_of = raw.get("as_of")
        return cls(entries, as_of=str(as_of) if as_of is not None else None)

    # --- lookups ------------------------------------------------------------------------

    def price(self, model: str, provider: str | None = None) -> Price | None:
        """The price of ``model`` (served by ``provider``), or None when nothing matches.

        Order: qualified exact, qualified globs, bare exact, bare globs; globs in file order.
        """
        name = model.strip().lower()
        candidates = [(f"{provider.strip().lower()}/{name}", True)] if provider else []
        candidates.append((name, False))
        for candidate, qualified in candidates:
            exact = self._exact.get(candidate)
            if exact is not None:
                return exact
            for pattern, price in self._globs:
                # The qualified name only meets qualified globs: a bare catch-all like "*"
                # must not shadow the bare exact entry tried next.
                if qualified and "/" not in pattern:
                    continue
                if fnmatch.fnmatchcase(candidate, pattern):
                    return price
        return None

    def estimate(
        self, model: str, provider: str | None, input_tokens: int, output_tokens: int
    ) -> CostEstimate:
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts must be >= 0")
        price = self.price(model, provider)
        if price is None:
            return CostEstimate(usd=0.0, known=False)
        return CostEstimate(usd=price.cost(input_tokens, output_tokens), known=True, price=price)

    def cost_usd(
        self, model: str, provider: str | None, input_tokens: int, output_tokens: int
    ) -> float:
        """USD for one call; 0.0 for unknown models (use ``estimate`` to tell them apart)."""
        return self.estimate(model, provider, input_tokens, output_tokens).usd


def _parse_price(key: str, body: Any, source: str) -> Price:
    if not isinstance(body, dict) or not {"input", "output"} <= body.keys():
        raise PriceConfigError(f"{source}: {key!r} needs `input` and `output` (USD per 1M)")
    values: list[float] = []
    for field in ("input", "output"):
        value = body[field]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PriceConfigError(f"{source}: {key!r}.{field} must be a number")
        if not math.isfinite(value) or value < 0:
            raise PriceConfigError(f"{source}: {key!r}.{field} must be a finite number >= 0")
        values.append(float(value))
    return Price(input_per_mtok=values[0], output_per_mtok=values[1], key=key)


@lru_cache(maxsize=8)
def cached_price_table(path: str | None = None) -> PriceTable:
    """One parsed table per path for the process (pass ``settings.prices_file``)."""
    return PriceTable.from_file(path or DEFAULT_PRICES_FILE)
