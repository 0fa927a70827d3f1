"""Import mappings: a declarative TOML file that turns a user's log into the admatch schema.

See ``docs/mappings.md`` for the format. A mapping is validated on load (unknown keys, unknown
schema columns, a column defined twice, required columns left unmapped) and every problem is
reported at once, naming its key.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.errors import ConfigError
from features.schema import COLUMN_BY_NAME, REQUIRED_COLUMNS, TRUTH_COLUMNS

BUILTIN = ("ipinyou", "open_bandit")
BOOL_OUTCOMES = ("engaged", "converted", "negative")
_Scalar = str | int | float | bool


class Source(BaseModel):
    """How to read the input files."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["csv", "parquet"] | None = Field(
        None, description="input format; default: from the file suffix"
    )
    separator: str | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="CSV field separator; default: from the suffix (.tsv: tab) or the header",
    )
    null_values: list[str] = Field(default_factory=list, description="CSV strings read as null")


class Timestamp(BaseModel):
    """How to build ``ts``: parse a column (format or epoch unit) or use a constant."""

    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    format: str | None = Field(None, description="chrono format, e.g. %Y-%m-%d %H:%M:%S")
    epoch_unit: Literal["s", "ms", "us", "ns"] | None = None
    timezone: str = Field("UTC", description="zone of times written without one")
    constant: str | None = Field(None, description="ISO 8601 time used for every row")

    @model_validator(mode="after")
    def _one_way(self) -> Timestamp:
        if self.constant is not None:
            if self.column or self.format or self.epoch_unit:
                raise ValueError("constant excludes column, format and epoch_unit")
        elif self.column is None:
            raise ValueError("needs column (with format or epoch_unit) or constant")
        elif (self.format is None) == (self.epoch_unit is None):
            raise ValueError("needs exactly one of format and epoch_unit")
        return self


class ValueMap(BaseModel):
    """Map a source column's values to a schema column's values."""

    model_config = ConfigDict(extra="forbid")

    source: str
    values: dict[str, _Scalar]
    default: _Scalar | None = Field(None, description="for unmapped values; else rejected")


class Passthrough(BaseModel):
    """Source columns kept as extra columns, unchanged."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] = Field(default_factory=list)


class Mapping(BaseModel):
    """A whole mapping file."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    source: Source = Field(default_factory=Source)
    derived: dict[str, str] = Field(
        default_factory=dict,
        description="helper col = SQL expression over source columns, usable as a source below",
    )
    columns: dict[str, str] = Field(default_factory=dict, description="schema col = source col")
    constants: dict[str, _Scalar] = Field(default_factory=dict)
    timestamp: Timestamp | None = None
    value_maps: dict[str, ValueMap] = Field(default_factory=dict)
    expressions: dict[str, str] = Field(
        default_factory=dict, description="schema col = SQL expression over source columns"
    )
    outcomes: dict[str, str] = Field(
        default_factory=dict, description="outcome col = source col holding it (bool, 0/1)"
    )
    passthrough: Passthrough = Field(default_factory=Passthrough)

    def targets(self) -> dict[str, str]:
        """Schema column -> the section that defines it."""
        out: dict[str, str] = {}
        for section in ("columns", "constants", "value_maps", "expressions", "outcomes"):
            for name in getattr(self, section):
                out.setdefault(name, section)
        if self.timestamp is not None:
            out.setdefault("ts", "timestamp")
        return out

    def problems(self) -> list[tuple[str, str]]:
        """Semantic problems (pydantic already checked the shape)."""
        problems: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        sections = ("columns", "constants", "value_maps", "expressions", "outcomes")
        for section in sections:
            for name in getattr(self, section):
                if section == "outcomes" and name not in BOOL_OUTCOMES:
                    problems.append(
                        (f"outcomes.{name}", "must be one of " + ", ".join(BOOL_OUTCOMES))
                    )
                elif name not in COLUMN_BY_NAME or name in TRUTH_COLUMNS:
                    problems.append((f"{section}.{name}", "not a column of the log schema"))
                elif name in seen:
                    problems.append((f"{section}.{name}", f"already defined in [{seen[name]}]"))
                else:
                    seen[name] = section
                if name == "ts":
                    problems.append((f"{section}.ts", "ts is defined in [timestamp]"))
        targets = self.targets()
        for name in REQUIRED_COLUMNS:
            if name not in targets:
                problems.append((name, "required column is not mapped"))
        return problems


def load_mapping(spec: str | Path) -> Mapping:
    """Load a mapping from a file path or a built-in name (``ipinyou``, ``open_bandit``).

    Raises:
        ConfigError: the file is missing, is not TOML, or breaks the mapping format; every
            problem is listed with its key.
    """
    name = str(spec)
    path = Path(name)
    if name in BUILTIN and not path.exists():
        text = resources.files("engine.logs").joinpath(f"mappings/{name}.toml").read_text()
        source = f"built-in mapping {name}"
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError([("mapping", f"cannot read {path}: {exc.strerror}")]) from exc
        source = f"mapping {path}"
    return parse_mapping(text, source)


def parse_mapping(text: str, source: str = "mapping") -> Mapping:
    """Parse and validate mapping TOML text."""
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("mapping", f"not valid TOML: {exc}")], source=source) from exc
    try:
        mapping = Mapping.model_validate(doc)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "mapping", err["msg"]) for err in exc.errors()
        ]
        raise ConfigError(problems, source=source) from exc
    problems = mapping.problems()
    if problems:
        raise ConfigError(problems, source=source)
    return mapping
