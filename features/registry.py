"""The feature registry: each feature is a pure function returning a polars expression.

A feature is registered once, with its name, output dtype and a one-line doc, and then used by
every mode of the feature core (offline over a log, online over one request, batched over many).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from features.params import FeatureParams

ExprBuilder = Callable[[FeatureParams], pl.Expr]


@dataclass(frozen=True)
class Feature:
    """One registered feature.

    Attributes:
        name: output column name, unique in the registry.
        dtype: output dtype (the expression is cast to it).
        doc: one line of meaning, with units.
        build: pure function of the fitted parameters returning the expression.
        categorical: whether a model should treat it as categorical codes.
        passthrough: the feature is an input column as it is (an exposure count handed in by
            the caller online); online it skips polars and goes straight into the matrix.
        definition: what the values mean where the name alone does not say it (a model
            trained on another definition is refused: ``engine.model.bundle``).
    """

    name: str
    dtype: pl.DataType
    doc: str
    build: ExprBuilder
    categorical: bool = False
    passthrough: bool = False
    definition: str = ""

    def expr(self, params: FeatureParams) -> pl.Expr:
        """The feature's expression, cast to its dtype and named."""
        return self.build(params).cast(self.dtype).alias(self.name)


class FeatureRegistry:
    """An ordered set of features; order is the column order of feature matrices."""

    def __init__(self) -> None:
        self._features: dict[str, Feature] = {}

    def register(
        self, name: str, dtype: pl.DataType, doc: str, *, categorical: bool = False
    ) -> Callable[[ExprBuilder], ExprBuilder]:
        """Decorator registering ``fn(params) -> pl.Expr`` as feature ``name``.

        Raises:
            ValueError: the name is taken or the doc is empty.
        """

        def wrap(fn: ExprBuilder) -> ExprBuilder:
            self.add(Feature(name, dtype, doc, fn, categorical))
            return fn

        return wrap

    def add(self, feature: Feature) -> None:
        """Register a feature built elsewhere (e.g. one per exposure column)."""
        if feature.name in self._features:
            raise ValueError(f"feature {feature.name!r} is registered twice")
        if not feature.doc.strip():
            raise ValueError(f"feature {feature.name!r} has no doc")
        self._features[feature.name] = feature

    def __iter__(self) -> Iterator[Feature]:
        return iter(self._features.values())

    def __len__(self) -> int:
        return len(self._features)

    def __getitem__(self, name: str) -> Feature:
        return self._features[name]

    @property
    def names(self) -> list[str]:
        """Feature names in registry order."""
        return list(self._features)

    def schema(self) -> pl.Schema:
        """Output schema: name -> dtype, in order."""
        return pl.Schema([(f.name, f.dtype) for f in self])
