# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Candidates of the row encoding read from their wire bytes straight into the decoder's columns.

``rows`` walks a serialized ``CandidateList`` once and builds the columns ``decode`` hands the
core (an empty string or a zero duration or attribute set unknown: ``None``; enums by name), with
every check ``decode``'s checked path makes of a value (lengths, entries, enums, ranges) done on
the way. The checked path read each of a candidate's 13 attributes through a protobuf message
object, one Python call each (~110 us a request of 100 candidates before any check).

It answers ``None`` (the caller takes the checked path, which names the field, the value and
the rule) whenever a value is refused, or the bytes hold what it does not read: groups, a
malformed length or varint, text that is not UTF-8. Duplicate ad ids are the caller's check.
Fields follow protobuf's rules: the last of a repeated singular field wins, a field with
another wire type than its declared one is an unknown field (skipped), int32 enums keep the
low 32 bits of their varint, signed, and uint32 the low 32 bits.
"""

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport isfinite
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL

cdef enum:
    VARINT = 0
    I64 = 1
    LEN = 2
    I32 = 5
    SLOTS = 16384  # texts kept (a power of 2)
    KEPT_BYTES = 64  # longer texts are made anew each time, not kept

# The texts read lately, by a hash of their bytes (direct-mapped: a text takes its slot's
# place): an ad server sends the same ids request after request (ads, campaigns, advertisers,
# categories), so most are found here instead of made; a new str object per text cost more
# than the rest of the read (its memory cold in a pass of many requests). Kept: at most SLOTS
# strings of at most KEPT_BYTES bytes (ids are short), ~5 MB at worst.
cdef PyObject *_kept[SLOTS]
cdef uint64_t _kept_hash[SLOTS]


cdef object _text(const unsigned char *p, Py_ssize_t n):
    """The str of UTF-8 bytes (raises UnicodeDecodeError), the one kept when it is there."""
    cdef uint64_t h = 14695981039346656037ULL  # FNV-1a
    cdef Py_ssize_t i, size
    if n > KEPT_BYTES:
        return PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    cdef Py_ssize_t slot = <Py_ssize_t>(h & (SLOTS - 1))
    cdef PyObject *kept = _kept[slot]
    cdef const char *utf8
    if kept != NULL and _kept_hash[slot] == h:
        utf8 = PyUnicode_AsUTF8AndSize(<object>kept, &size)
        if size == n and memcmp(utf8, p, n) == 0:
            return <object>kept
    value = PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
    Py_INCREF(value)
    _kept[slot] = <PyObject *>value
    _kept_hash[slot] = h
    Py_XDECREF(kept)
    return value


cdef inline bint _varint(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos,
                         uint64_t *out) noexcept:
    """A varint at ``pos`` (moved past it); False when it runs past ``end`` or 10 bytes."""
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef unsigned char b
    while pos[0] < end and shift < 70:
        b = p[pos[0]]
        pos[0] += 1
        if shift < 64:
            value |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = value
            return True
        shift += 7
    return False


cdef inline bint _length(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos,
                         Py_ssize_t *out) noexcept:
    """A length prefix whose bytes lie within ``end``."""
    cdef uint64_t n
    if not _varint(p, end, pos, &n) or n > <uint64_t>(end - pos[0]):
        return False
    out[0] = <Py_ssize_t>n
    return True


cdef inline bint _skip(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos,
                       int wire) noexcept:
    """Past an unknown field's value; False for groups and anything malformed."""
    cdef uint64_t ignored
    cdef Py_ssize_t n
    if wire == VARINT:
        return _varint(p, end, pos, &ignored)
    if wire == I64 or wire == I32:
        n = 8 if wire == I64 else 4
        if end - pos[0] < n:
            return False
        pos[0] += n
        return True
    if wire == LEN:
        if not _length(p, end, pos, &n):
            return False
        pos[0] += n
        return True
    return False


cdef inline double _double(const unsigned char *p, Py_ssize_t pos) noexcept:
    cdef double value
    memcpy(&value, p + pos, 8)  # little-endian, as the wire (x86, arm64)
    return value


cdef object _enum(list table, int32_t number, int32_t low):
    """``table[number]``, or the caller's refusal (``_REFUSED``) outside [low, len)."""
    if number < low or number >= len(table):
        return _REFUSED
    return table[number]


cdef object _REFUSED = object()
cdef str _EMPTY = ""


def rows(bytes data, Py_ssize_t max_chars, Py_ssize_t max_entries, list formats,
         list pricings, list ratings, double duration_high, double bid_low,
         uint32_t attributes_high):
    """The 13 candidate columns of a serialized ``CandidateList``, checked, in ``decode``'s
    order (``_ATTRS``) and vocabulary, the last ``None`` when no candidate excludes content;
    ``None`` when a value is refused or the bytes hold what this reader does not read (the
    checked path then names it).

    ``max_chars``: the longest text (characters); ``max_entries``: excluded-content entries a
    candidate may have; the enum tables by number (``None``: no such value); the ranges of
    duration (0 to ``duration_high``), bid (``bid_low`` or more) and attribute sets (up to
    ``attributes_high``)."""
    cdef const unsigned char *p = data
    cdef Py_ssize_t end = len(data), pos = 0, stop, length
    cdef uint64_t key, number
    cdef int field, wire
    cdef int32_t fmt, pricing, tier
    cdef uint32_t attributes
    cdef double duration, bid
    cdef bint excludes = False
    cdef object value, ad, creative, campaign, advertiser, category, domain
    cdef object format_name, pricing_name, tier_name
    cdef list excluded
    cdef list ads = [], creatives = [], campaigns = [], advertisers = [], categories = []
    cdef list domains = [], formats_out = [], pricings_out = [], tiers = [], durations = []
    cdef list bids = [], attribute_sets = [], exclusions = []
    while pos < end:
        if not _varint(p, end, &pos, &key):
            return None
        if key != ((1 << 3) | LEN):  # not an item: an unknown field of the list
            if not _skip(p, end, &pos, <int>(key & 7)):
                return None
            continue
        if not _length(p, end, &pos, &length):
            return None
        stop = pos + length
        ad = creative = campaign = advertiser = category = domain = _EMPTY
        excluded = None
        fmt = pricing = tier = 0
        attributes = 0
        duration = bid = 0.0
        while pos < stop:
            if not _varint(p, stop, &pos, &key):
                return None
            field, wire = <int>(key >> 3), <int>(key & 7)
            if wire == LEN and (1 <= field <= 5 or field == 12 or field == 13):
                if not _length(p, stop, &pos, &length):
                    return None
                if length == 0:
                    value = _EMPTY
                else:
                    try:
                        value = _text(p + pos, length)
                    except UnicodeDecodeError:
                        return None
                    if len(value) > max_chars:
                        return None
                pos += length
                if field == 1:
                    ad = value
                elif field == 2:
                    creative = value
                elif field == 3:
                    campaign = value
                elif field == 4:
                    advertiser = value
                elif field == 5:
                    category = value
                elif field == 13:
                    domain = value
                else:
                    if excluded is None:
                        excluded = []
                    excluded.append(value)
            elif wire == VARINT and (field == 6 or 9 <= field <= 11):
                if not _varint(p, stop, &pos, &number):
                    return None
                if field == 6:
                    fmt = <int32_t>number
                elif field == 9:
                    pricing = <int32_t>number
                elif field == 10:
                    tier = <int32_t>number
                else:
                    attributes = <uint32_t>number
            elif wire == I64 and (field == 7 or field == 8):
                if stop - pos < 8:
                    return None
                if field == 7:
                    duration = _double(p, pos)
                else:
                    bid = _double(p, pos)
                pos += 8
            elif not _skip(p, stop, &pos, wire):
                return None
        if pos != stop:
            return None
        # the checks of decode's checked path, on this candidate's values
        if ad is _EMPTY:
            return None  # an ad id is required
        if duration != 0.0 and not (isfinite(duration) and 0.0 <= duration <= duration_high):
            return None
        if not (isfinite(bid) and bid >= bid_low):
            return None
        if attributes > attributes_high:
            return None
        if excluded is not None and len(excluded) > max_entries:
            return None
        format_name = _enum(formats, fmt, 1)
        pricing_name = _enum(pricings, pricing, 1)
        tier_name = _enum(ratings, tier, 0)
        if format_name is _REFUSED or pricing_name is _REFUSED or tier_name is _REFUSED:
            return None
        ads.append(ad)
        creatives.append(None if creative is _EMPTY else creative)
        campaigns.append(None if campaign is _EMPTY else campaign)
        advertisers.append(None if advertiser is _EMPTY else advertiser)
        categories.append(None if category is _EMPTY else category)
        domains.append(None if domain is _EMPTY else domain)
        formats_out.append(format_name)
        pricings_out.append(pricing_name)
        tiers.append(tier_name)
        durations.append(None if duration == 0.0 else duration)
        bids.append(bid)
        attribute_sets.append(None if attributes == 0 else attributes)
        exclusions.append(excluded)
        excludes = excludes or excluded is not None
    return [
        ads, creatives, campaigns, advertisers, categories, domains, formats_out, pricings_out,
        tiers, durations, bids, attribute_sets, exclusions if excludes else None,
    ]
