"""The Redis key layout is a contract: these bytes must not change without a version bump."""

from __future__ import annotations

from engine.caps.keys import KEY_VERSION, KeySpace, escape, family_code, fingerprint
from engine.caps.rules import Family


def test_key_layout_exact_bytes() -> None:
    ks = KeySpace("admatch")
    tag = ks.tag("h000017", "u000042")
    assert KEY_VERSION == 8
    assert tag == "h=h000017"
    base = "admatch:v8:{h=h000017}"
    assert ks.parts(tag) == [f"{base}:{p}" for p in ("e", "n", "t", "s", "g", "f")]
    assert ks.blocks(tag, "household", "h:17", "advertiser") == f"{base}:b:h:h%3A17:adv"
    assert ks.markers(tag, 20_515) == f"{base}:i:20515"
    assert fingerprint("imp-1") == bytes.fromhex("8b596cdb2726")  # BLAKE2b-64, its first 6 bytes
    assert ks.tag(None, "u:{x}") == "u=u%3A%7Bx%7D"
    # a family's name in the summaries
    assert family_code(Family(scope="user", target="campaign")) == "u.cmp"
    assert family_code(Family(scope="household", target="any", slot="ott_boot")) == (
        "h.any.sl=ott_boot"
    )
    assert family_code(Family(scope="user", target="any", touchpoint="ai_voice")) == (
        "u.any.tp=ai_voice"
    )


def test_ids_never_collide_or_break_the_hash_tag() -> None:
    assert escape("a:b") != escape("a%3Ab")
    assert "{" not in escape("{evil}") and "}" not in escape("{evil}")
    codes = {
        family_code(Family(scope=s, target=t))
        for s in ("user", "household", "device")
        for t in ("creative", "ad", "campaign", "advertiser", "category", "any")
    }
    assert len(codes) == 18
