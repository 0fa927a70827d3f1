"""Everything the feature expressions need besides the rows: fitted statistics and priors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from engine.errors import ConfigError
from features.schema import FORMATS, SLOTS
from features.stats import EngagementStats
from features.taxonomy import Taxonomy


@dataclass(frozen=True)
class Priors:
    """Domain priors: slot x format intrusiveness (0..1), the CPA conversion prior and,
    optionally, the category taxonomy through which interests match ad categories."""

    intrusiveness: dict[str, dict[str, float]]
    conversion_prior: float
    taxonomy: Taxonomy | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "priors") -> Priors:
        """Validate a priors document; every problem is reported at once.

        Raises:
            ConfigError: unknown or missing slots and formats, values outside [0, 1].
        """
        problems: list[tuple[str, str]] = []
        unknown = set(doc) - {"intrusiveness", "conversion", "taxonomy"}
        problems += [(k, "unknown key") for k in sorted(unknown)]
        table = doc.get("intrusiveness", {})
        for slot in sorted(set(table) - set(SLOTS)):
            problems.append((f"intrusiveness.{slot}", "unknown slot"))
        for slot in SLOTS:
            row = table.get(slot)
            if row is None:
                problems.append((f"intrusiveness.{slot}", "missing slot"))
                continue
            for fmt in sorted(set(row) - set(FORMATS)):
                problems.append((f"intrusiveness.{slot}.{fmt}", "unknown format"))
            for fmt in FORMATS:
                value = row.get(fmt)
                if value is None:
                    problems.append((f"intrusiveness.{slot}.{fmt}", "missing format"))
                elif not isinstance(value, int | float) or not 0 <= value <= 1:
                    problems.append((f"intrusiveness.{slot}.{fmt}", "must be a number in [0, 1]"))
        conv = doc.get("conversion", {}).get("prior")
        if not isinstance(conv, int | float) or not 0 < conv <= 1:
            problems.append(("conversion.prior", "must be a number in (0, 1]"))
        taxonomy = None
        if "taxonomy" in doc:
            try:
                taxonomy = Taxonomy.from_dict(doc["taxonomy"])
            except ValueError as exc:
                problems.append(("taxonomy", str(exc)))
        if problems:
            raise ConfigError(problems, source=source)
        return cls(
            {s: {f: float(table[s][f]) for f in FORMATS} for s in SLOTS},
            float(conv),
            taxonomy,
        )

    def to_dict(self) -> dict[str, Any]:
        """The document :meth:`from_dict` reads (the shape of ``priors.toml``)."""
        out = {"intrusiveness": self.intrusiveness, "conversion": {"prior": self.conversion_prior}}
        return out | ({"taxonomy": self.taxonomy.to_dict()} if self.taxonomy else {})

    @classmethod
    def default(cls) -> Priors:
        """The priors shipped in ``features/priors.toml``."""
        text = resources.files("features").joinpath("priors.toml").read_text()
        return cls.from_dict(tomllib.loads(text), source="features/priors.toml")


@dataclass(frozen=True)
class FeatureParams:
    """Inputs of the feature expressions that are not columns of the rows."""

    stats: EngagementStats
    priors: Priors
