"""The one revenue rule (engine/pricing.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.pricing import earned


def test_each_pricing_earns_on_its_own_outcome() -> None:
    pricing = np.array(["cpm", "cpc", "cpa", "cpm", "cpc", "cpa"])
    bid = np.array([2.0, 0.5, 4.0, 2.0, 0.5, 4.0])
    engaged = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    converted = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    got = earned(pricing, bid, engaged, converted)
    assert got == pytest.approx([0.002, 0.0, 0.0, 0.002, 0.5, 4.0])
    # probabilities give expected revenue
    assert earned(np.array(["cpc"]), np.array([0.5]), np.array([0.1]), np.array([0.0]))[
        0
    ] == pytest.approx(0.05)
