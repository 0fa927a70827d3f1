"""The Redis key layout is a contract: these bytes must not change without a version bump."""

from __future__ import annotations

from engine.caps.keys import KEY_VERSION, KeySpace, escape, family_code, fingerprint
from engine.caps.rules import Family


def test_key_layout_exact_bytes() -> None:
    ks = KeySpace("admatch")
    tag = ks.tag("h000017", "u000042")
    user_campaign = Family(scope="user", target="campaign")
    boot = Family(scope="household", target="any", slot="ott_boot")
    voice = Family(scope="user", target="any", touchpoint="ai_voice")
    assert KEY_VERSION == 3
    assert tag == "h=h000017"
    assert ks.counters(tag, user_campaign, "u000042") == "admatch:v3:{h=h000017}:c:u.cmp:u000042"
    assert ks.counters(tag, boot, "h000017") == "admatch:v3:{h=h000017}:c:h.any.sl=ott_boot:h000017"
    assert (
        ks.counters(tag, voice, "u000042") == "admatch:v3:{h=h000017}:c:u.any.tp=ai_voice:u000042"
    )
    assert ks.blocks(tag, "household", "h:17", "advertiser") == (
        "admatch:v3:{h=h000017}:b:h:h%3A17:adv"
    )
    assert ks.markers(tag, 20_515) == "admatch:v3:{h=h000017}:i:20515"
    assert fingerprint("imp-1") == bytes.fromhex("8b596cdb2726583e")  # BLAKE2b, 8 bytes
    base, code = ks.base(tag), "u.cmp"
    assert ks.counters_at(base, code, "u000042") == ks.counters(tag, user_campaign, "u000042")
    assert ks.tag(None, "u:{x}") == "u=u%3A%7Bx%7D"


def test_ids_never_collide_or_break_the_hash_tag() -> None:
    assert escape("a:b") != escape("a%3Ab")
    assert "{" not in escape("{evil}") and "}" not in escape("{evil}")
    codes = {
        family_code(Family(scope=s, target=t))
        for s in ("user", "household", "device")
        for t in ("creative", "ad", "campaign", "advertiser", "category", "any")
    }
    assert len(codes) == 18
