"""Events as an ad server reports them, for the tests that talk to a real server."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from admatch.v1 import admatch_pb2 as pb


def mobile_event(
    impression_id: str, who: str, ad: str, campaign: str, when: datetime, **kw: Any
) -> pb.Event:
    """An impression (or, with ``type`` and ``negative_kind`` in ``kw``, feedback) on a phone's
    feed: user ``u_<who>`` of household ``h_<who>`` on device ``phone_<who>``."""
    e = pb.Event(
        type=kw.pop("type", pb.Event.TYPE_IMPRESSION),
        impression_id=impression_id,
        user_id=f"u_{who}",
        household_id=f"h_{who}",
        device_id=f"phone_{who}",
        touchpoint=pb.TOUCHPOINT_MOBILE,
        slot=pb.SLOT_MOBILE_FEED,
        ad_id=ad,
        campaign_id=campaign,
        advertiser_id=f"adv_{ad}",
        **kw,
    )
    e.time.FromDatetime(when)
    return e
