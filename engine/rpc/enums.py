"""The ``admatch.v1`` enums and the schema's vocabulary, both ways, in one place.

Enum names map mechanically to the schema's values (``SLOT_OTT_BOOT`` <-> ``ott_boot``):
``TOUCHPOINT[number]`` is the value of an enum number (``None`` for UNSPECIFIED) and
``NUMBER["touchpoint"][value]`` the number of a value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from admatch.v1 import admatch_pb2 as pb
from engine.scoring.types import REASONS, Reason


def _names(enum: Any, prefix: str) -> list[str | None]:
    """Schema value per enum number (None for UNSPECIFIED)."""
    out: list[str | None] = [None] * (max(enum.values()) + 1)
    for name, number in enum.items():
        if number:
            out[number] = name.removeprefix(prefix).lower()
    return out


TOUCHPOINT = _names(pb.Touchpoint, "TOUCHPOINT_")
SLOT = _names(pb.Slot, "SLOT_")
SCENE = _names(pb.Scene, "SCENE_")
FORMAT = _names(pb.Format, "FORMAT_")
PRICING = _names(pb.Pricing, "PRICING_")
RATING = _names(pb.Rating, "RATING_")
AGE_BAND = _names(pb.AgeBand, "AGE_BAND_")
ACTIVITY = _names(pb.ActivityLevel, "ACTIVITY_LEVEL_")
AUDIENCE = _names(pb.Audience, "AUDIENCE_")
ASSISTANT_STATE = _names(pb.AssistantState, "ASSISTANT_STATE_")
SCOPE = _names(pb.CapScope, "CAP_SCOPE_")
NEGATIVE_KIND = _names(pb.Event.NegativeKind, "NEGATIVE_KIND_")

NUMBER: dict[str, dict[str, Any]] = {  # Any: the generated enums' ValueType
    name: {v: i for i, v in enumerate(table) if v is not None}
    for name, table in (
        ("touchpoint", TOUCHPOINT),
        ("slot", SLOT),
        ("scene", SCENE),
        ("format", FORMAT),
        ("pricing", PRICING),
        ("rating", RATING),
        ("age_band", AGE_BAND),
        ("activity", ACTIVITY),
        ("audience", AUDIENCE),
        ("assistant_state", ASSISTANT_STATE),
        ("scope", SCOPE),
        ("negative_kind", NEGATIVE_KIND),
    )
}

REASON = {r: pb.Reason.Value(f"REASON_{r.value}") for r in Reason}  # core -> wire
REASON_OF = {number: reason for reason, number in REASON.items()}  # wire -> core
WIRE_REASON = np.array([REASON[r] for r in REASONS], dtype=np.uint8)  # core code -> wire
