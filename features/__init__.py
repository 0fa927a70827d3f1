"""The vectorised polars feature core shared by training and serving.

Public entry points: :class:`FeatureCore` (offline, batch and online modes),
:data:`FEATURES` (the registry), :class:`FeatureParams`, :class:`EngagementStats`,
:class:`Priors`, :class:`RequestContext`, and the log I/O in :mod:`features.logio`.
"""

from features.core import FeatureCore
from features.definitions import FEATURES
from features.online import RequestContext
from features.params import FeatureParams, Priors
from features.stats import EngagementStats

__all__ = [
    "FEATURES",
    "EngagementStats",
    "FeatureCore",
    "FeatureParams",
    "Priors",
    "RequestContext",
]
