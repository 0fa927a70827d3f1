"""What a shown ad earns, by its pricing: the one rule the tuner, the replay's quality report
and the closed loop count revenue by.

CPM pays per impression (``bid`` per thousand), CPC per engagement, CPA per conversion; pass
outcomes (0/1) for realised revenue or probabilities for expected revenue.
"""

from __future__ import annotations

import numpy as np


def earned(
    pricing: np.ndarray, bid: np.ndarray, engaged: np.ndarray, converted: np.ndarray
) -> np.ndarray:
    """Revenue per shown row: ``pricing`` holds "cpm", "cpc" or "cpa" (strings)."""
    cpm, cpc = pricing == "cpm", pricing == "cpc"
    return np.where(cpm, bid / 1000, np.where(cpc, bid * engaged, bid * converted))
