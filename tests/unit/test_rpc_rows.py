"""The compiled reader of the row encoding (``engine/rpc/_rows.pyx``) against the checked path
it stands in for: the same columns, to the type and the sign of a zero, for every request the
checked path accepts, and ``None`` (so that the checked path names the problem) for every one
it refuses, whatever the bytes hold (unknown fields, a field sent twice, another wire type,
varints past 32 bits)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admatch.v1 import admatch_pb2 as pb
from engine.errors import InvalidArgument
from engine.rpc import decode
from engine.rpc.limits import Limits
from engine.scoring.types import RANGED
from tests.unit.test_rpc_decode import base

LIMITS = Limits(string_chars=6, blocked=2)  # small, for values on both sides of each bound
TEXT = ["", "a", "ad-ü", "xxxxxx", "€€€€€€"]  # within the bound
ENUMS = st.one_of(
    st.integers(-2, 12),
    st.sampled_from([2**31 - 1, -(2**31), 2**16 + 1, 1000]),
    st.integers(-(2**31), 2**31 - 1),
)
DOUBLES = st.one_of(
    st.sampled_from(
        [0.0, -0.0, 1.5, 3600.0, 3600.0000001, -1e-300, math.nan, math.inf, -math.inf, 1e308]
    ),
    st.floats(),
)
TEXTS = st.one_of(st.sampled_from(["xxxxxxx", "€€€€€€€", *TEXT]), st.text(max_size=8))
# per field: a value the checks accept, and any value (one field of a candidate at a time)
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "ad_id": (st.sampled_from(["a", "b", "c", "ad-ü", "xxxxxx"]), TEXTS),
    **{
        name: (st.sampled_from(TEXT), TEXTS)
        for name in ("creative_id", "campaign_id", "advertiser_id", "category")
    },
    "advertiser_domain": (st.sampled_from(TEXT), TEXTS),
    "format": (st.integers(1, 5), ENUMS),
    "pricing": (st.integers(1, 3), ENUMS),
    "suitability_tier": (st.integers(0, 4), ENUMS),
    "duration_s": (st.sampled_from([0.0, -0.0, 1.5, 3600.0]), DOUBLES),
    "bid": (st.sampled_from([0.0, -0.0, 2.5, 1e308]), DOUBLES),
    "creative_attributes": (
        st.sampled_from([0, 1, 131071]),
        st.one_of(st.sampled_from([131072, 2**32 - 1]), st.integers(0, 2**32 - 1)),
    ),
    "excluded_content": (
        st.lists(st.sampled_from(TEXT), max_size=2),
        st.lists(TEXTS, max_size=4),
    ),
}


@st.composite
def candidates(draw: st.DrawFn) -> list[pb.Candidate]:
    """Candidates the checks accept but for one field of one of them, which may be anything
    (or none: all accepted)."""
    rows = draw(
        st.lists(
            st.fixed_dictionaries({name: ok for name, (ok, _) in FIELDS.items()}),
            min_size=1,
            max_size=5,
            unique_by=lambda row: row["ad_id"],  # a second ad id only as the one edge
        )
    )
    edge = draw(st.sampled_from([None, *FIELDS]))
    if edge is not None:
        rows[draw(st.integers(0, len(rows) - 1))][edge] = draw(FIELDS[edge][1])
    return [pb.Candidate(**row) for row in rows]


def with_candidates(items: list[pb.Candidate] | bytes) -> pb.ScoreRequest:
    """The golden pod request with these candidates (or a CandidateList's bytes)."""
    msg = base()
    if isinstance(items, bytes):
        msg.candidates.CopyFrom(pb.CandidateList.FromString(items))
    else:
        del msg.candidates.items[:]
        msg.candidates.items.extend(items)
    return pb.ScoreRequest.FromString(msg.SerializeToString())


def checked(msg: pb.ScoreRequest) -> dict[str, Any] | InvalidArgument:
    """The checked path's columns, or its refusal."""
    try:
        n = decode._count(msg, LIMITS)
        return decode._checked_columns(msg, LIMITS, decode._Paths(msg), n)
    except InvalidArgument as exc:
        return exc


def shown(columns: dict[str, Any]) -> list[tuple[str, str]]:
    """The columns in order, each value with its type (and a zero with its sign)."""
    return [(k, repr([(type(v).__name__, v) for v in values])) for k, values in columns.items()]


def assert_same(msg: pb.ScoreRequest, readable: bool = True) -> None:
    """The request decodes as the checked path decodes it; the compiled reader reads what the
    checked path accepts (unless the bytes are not ``readable``: groups) and refuses what it
    refuses (duplicate ad ids aside: the caller's check)."""
    expected, read = checked(msg), decode._read_rows(msg, LIMITS)
    if isinstance(expected, InvalidArgument):
        ads = [] if read is None else read["ad_id"]
        assert read is None or len(set(ads)) < len(ads), f"{expected} was read as {read}"
        with pytest.raises(InvalidArgument) as info:
            decode._columns(msg, LIMITS)
        assert str(info.value) == str(expected)
    else:
        if not readable:
            assert read is None
        else:
            assert read is not None, "the compiled reader refused what the checked path accepts"
            assert shown(read) == shown(expected)
        assert shown(decode._columns(msg, LIMITS)) == shown(expected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=candidates())
def test_the_compiled_reader_makes_the_checked_paths_columns_or_leaves_it_the_refusal(
    items: list[pb.Candidate],
) -> None:
    assert_same(with_candidates(items))


def test_a_valid_request_takes_the_compiled_reader() -> None:
    msg = base()
    read = decode._read_rows(msg, LIMITS.__class__())
    assert read is not None and read["ad_id"] == [c.ad_id for c in msg.candidates.items]


def _varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


VALID = pb.Candidate(
    ad_id="a", format=pb.FORMAT_VIDEO, pricing=pb.PRICING_CPM, bid=2.0, duration_s=15.0
).SerializeToString()


def _item(extra: bytes, front: bytes = b"") -> bytes:
    body = front + VALID + extra
    return _key(1, 2) + _varint(len(body)) + body


@pytest.mark.parametrize(
    ("items", "compiled"),
    [
        (_item(_key(99, 0) + _varint(7)), True),  # unknown varint
        (_item(_key(99, 1) + b"\x01" * 8), True),  # unknown fixed64
        (_item(_key(99, 5) + b"\x01" * 4), True),  # unknown fixed32
        (_item(_key(99, 2) + _varint(3) + b"abc"), True),  # unknown bytes
        (_item(_key(6, 2) + _varint(1) + b"\x02"), True),  # format with another wire type
        (_item(_key(7, 0) + _varint(5)), True),  # duration as a varint
        (_item(_key(1, 0) + _varint(5)), True),  # ad id as a varint
        (_item(_key(1, 2) + _varint(1) + b"z"), True),  # ad id twice: the last wins
        (_item(_key(6, 0) + _varint(2)), True),  # format twice
        (_item(_key(10, 0) + _varint(-1)), False),  # a negative tier, 10 bytes: refused
        (_item(_key(10, 0) + _varint(2**32 + 1)), True),  # past 32 bits: the low 32 count
        (_item(_key(11, 0) + _varint(2**32 + 3)), True),  # attributes: the low 32 bits
        (_item(_key(8, 1) + b"\x00" * 7 + b"\x80"), True),  # bid -0.0
        (_item(_key(12, 2) + _varint(0)), True),  # an empty excluded entry
        (_item(b"", front=_key(99, 0) + _varint(1)), True),  # unknown field first
        (_key(99, 0) + _varint(1) + _item(b""), True),  # an unknown field of the list
        (_item(_key(99, 3) + _key(1, 2) + _varint(1) + b"q" + _key(99, 4)), False),  # group
        (_item(b"") + _item(_key(1, 2) + _varint(1) + b"b"), True),
    ],
)
def test_the_compiled_reader_follows_protobufs_rules_for_what_the_bytes_hold(
    items: bytes, compiled: bool
) -> None:
    msg = with_candidates(items)
    assert_same(msg, readable=compiled or isinstance(checked(msg), InvalidArgument))
    read = decode._read_rows(msg, LIMITS)
    assert (read is not None) == compiled
    # the bytes as sent, before protobuf's parser merged them: read the same
    as_sent = decode._read_row_bytes(items, LIMITS)
    assert (as_sent and shown(as_sent)) == (read and shown(read))


def test_the_compiled_reader_checks_exactly_the_ranged_columns() -> None:
    """It checks duration from 0, bid from its low bound, attributes from 0 up to their high:
    a new ranged candidate column (or a changed bound's side) needs a check there."""
    assert [(c.name, c.low, c.high is None) for c in RANGED] == [
        ("duration_s", 0, False),
        ("bid", 0, True),
        ("creative_attributes", 0, False),
    ]


def test_texts_kept_between_reads_are_the_texts_sent() -> None:
    """The reader keeps the texts it read lately (by a hash of their bytes, one per slot):
    more distinct ids than it keeps, read twice, come back as sent."""

    def read(ids: list[str]) -> list[str]:
        items = pb.CandidateList(
            items=[
                pb.Candidate(
                    ad_id=a, campaign_id=a[::-1], format=pb.FORMAT_VIDEO, pricing=pb.PRICING_CPM
                )
                for a in ids
            ]
        )
        got = decode._read_row_bytes(items.SerializeToString(), Limits())
        assert got is not None
        assert got["campaign_id"] == [a[::-1] for a in ids]
        return list(got["ad_id"])

    batches = [[f"ad-{b}-{i}-ü" for i in range(500)] for b in range(80)]  # 80,000 texts
    batches.append([f"{'x' * 100}-{i}" for i in range(50)])  # longer than a kept text
    for _ in range(2):
        for ids in batches:
            assert read(ids) == ids
