"""The feature core: one set of expressions, three modes (offline, online, batch)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from features.definitions import FEATURES
from features.exposure import EXPOSURE_SCHEMA, point_in_time_exposures
from features.logio import conform
from features.online import (
    CandidateColumns,
    RequestContext,
    assemble,
    candidate_counts,
    exposure_matrix,
)
from features.params import FeatureParams
from features.registry import Feature, FeatureRegistry


@dataclass(frozen=True)
class FeatureBatch:
    """Features of the candidates of one or more requests, in request order.

    Attributes:
        computed: the features polars computes, one column each.
        exposures: the passthrough features (exposure counts and recencies handed in by the
            caller), shape (rows, k), in ``names`` order after the computed ones; NaN is null.
        names: all feature names in matrix column order.
        inputs: the rows the features were computed from (log-schema columns), for callers
            that need the raw values too (the scorer's eligibility rules).
    """

    computed: pl.DataFrame
    exposures: np.ndarray
    names: list[str]
    inputs: pl.DataFrame

    def __len__(self) -> int:
        return len(self.exposures)

    def matrix(self) -> np.ndarray:
        """All features as a C-ordered float64 matrix (nulls as NaN), for a model."""
        out = np.empty((len(self.exposures), len(self.names)), dtype=np.float64)
        k = self.computed.width
        out[:, :k] = self.computed.to_numpy(order="c")
        out[:, k:] = self.exposures
        return out

    def to_frame(self) -> pl.DataFrame:
        """All features as one polars frame with registry dtypes (for tests and tools)."""
        names = self.names[self.computed.width :]
        exp = pl.from_numpy(self.exposures, schema=names, orient="row").fill_nan(None)
        return pl.concat([self.computed, exp.cast(EXPOSURE_SCHEMA)], how="horizontal")


def feature_order(registry: FeatureRegistry = FEATURES) -> list[Feature]:
    """Features in matrix column order: computed ones, then the passthrough exposure columns."""
    return [f for f in registry if not f.passthrough] + [f for f in registry if f.passthrough]


class FeatureCore:
    """Computes the registered features with fitted parameters.

    Every mode runs the same expressions, built once here:

    * :meth:`offline` over a whole log (lazy), with point-in-time exposure counts;
    * :meth:`batch` over many requests whose exposure counts the caller hands in;
    * :meth:`online` over one request, which is :meth:`batch` with one request.

    Passthrough features (the exposure columns) are identities of input columns: offline they
    are selected like any feature; online the caller's matrix is used as it is.
    """

    def __init__(self, params: FeatureParams, registry: FeatureRegistry = FEATURES) -> None:
        self.params = params
        self.registry = registry
        computed = [f for f in registry if not f.passthrough]
        passthrough = [f.name for f in registry if f.passthrough]
        if passthrough != EXPOSURE_SCHEMA.names():
            raise ValueError("passthrough features must be the exposure columns, in order")
        self._computed = [f.expr(params) for f in computed]
        self._all = [f.expr(params) for f in feature_order(registry)]
        # the input columns the computed features read: online, only these are built
        self._inputs = set().union(*(e.meta.root_names() for e in self._computed))
        self.names = [f.name for f in feature_order(registry)]

    @property
    def categorical(self) -> list[str]:
        """Names of the features a model should treat as categorical."""
        return [f.name for f in self.registry if f.categorical]

    def offline(self, log: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
        """The log (sorted by ts, stable) with exposure and feature columns appended.

        The log's own columns stay, for labels and keys. Exposure counts are point-in-time:
        a row sees only impressions strictly before it.
        """
        rows = point_in_time_exposures(conform(log.lazy()))
        return rows.with_columns(self._all)

    def expressions(self) -> list[pl.Expr]:
        """Every feature's expression in ``names`` order, for frames that already carry the
        log and exposure columns (e.g. to apply other fitted statistics to the same rows)."""
        return list(self._all)

    def batch(
        self,
        requests: Sequence[RequestContext],
        candidates: Sequence[CandidateColumns],
        exposures: Sequence[np.ndarray | None] | None = None,
        also: Collection[str] = (),
    ) -> FeatureBatch:
        """Features for many requests in one polars pass.

        Args:
            requests: the requests.
            candidates: per request, its candidate columns.
            exposures: per request, an (n, k) matrix of ``EXPOSURE_SCHEMA`` columns for its n
                candidates, or ``None`` for no history; ``None`` for all.
            also: input columns to build beside those the features read (the batch's
                ``inputs``: what the scoring rules read).
        """
        rows = assemble(requests, candidates, self._inputs.union(also))
        sizes = candidate_counts(candidates)
        exp = exposure_matrix(exposures or [None] * len(requests), sizes)
        return FeatureBatch(rows.select_seq(self._computed), exp, self.names, rows)

    def online(
        self,
        request: RequestContext,
        candidates: CandidateColumns,
        exposures: np.ndarray | None = None,
    ) -> FeatureBatch:
        """Features for one request's candidates (the batch form with one request)."""
        return self.batch([request], [candidates], [exposures])

    def offline_matrix(self, features: pl.DataFrame) -> np.ndarray:
        """The feature columns of an offline frame as a C-ordered float64 matrix."""
        return features.select(self.names).to_numpy(order="c").astype(np.float64, copy=False)
