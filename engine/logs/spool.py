"""The decision spool: what a worker writes per Score decision on the request path's side,
cheaply, for a converter process to turn into the Parquet decision log (docs/loop.md).

Building Parquet rows of 100 candidates costs ~0.2-0.5 ms of a worker's CPU per request (rows,
Arrow cast, Parquet encoding, and the GIL they hold): 30-40% of the service's throughput
(BENCHMARKS.md). A spool record costs ~0.03 ms: the request as received (its protobuf bytes),
the decision's per-candidate numbers as two packed arrays, and its few per-request values.
``engine/logs/converter.py`` decodes the bytes with the server's own decoding and writes the
rows at low priority in another process.

A spool file is a sequence of records, each ``u32 length`` then its body; a torn last record
(a crash while writing) is detected by its length and skipped. Spool files rotate and finalise
like the logs' (``LogStream``); they are local files, deleted once converted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from engine.config import COST_COMPONENTS
from engine.logs.names import SPOOL
from engine.scoring.types import Decision, ScoreRequest

EXTENSION = SPOOL
MAGIC = b"ADMATCH-SPOOL-2\n"  # the first bytes of every spool file (its format's version)
_LENGTH = struct.Struct("<I")
# wire bytes, candidates, decided at, selection and no-ad propensity, exploration share,
# variant, flags (1 reserved, 2 cap store answered), model and config version lengths
_HEAD = struct.Struct("<IIddddiBHH")
FLOATS = ("propensity", "p_engage", "p_negative", "expected_value", "cost_total", "utility")
_N_FLOATS = len(FLOATS) + len(COST_COMPONENTS)
INTS = ("rank", "current_rank", "reason")
_RESERVED, _STORE_OK = 1, 2


@dataclass(frozen=True)
class Logged:
    """A request's decision as the decision log takes it: ``wire`` is the request's protobuf
    bytes as received (``None``: encode ``request``), ``at`` when it was decided."""

    request: ScoreRequest
    decision: Decision
    reserved: bool
    at: float
    wire: bytes | None = None


@dataclass(frozen=True)
class Record:
    """One spooled decision, read back: the request's bytes and the decision's numbers.

    ``floats``: (n x (FLOATS + cost components)) float64, in ``FLOATS`` order then the cost
    components; ``ints``: (n x 3) int16: rank, current rank, reason code (``CODE``).
    """

    wire: bytes
    at: float
    selection_propensity: float
    no_ad_propensity: float
    exploration_share: float
    variant: int
    reserved: bool
    cap_store_ok: bool
    model_version: str
    config_version: str
    floats: np.ndarray
    ints: np.ndarray


def _wire(item: Logged) -> bytes:
    if item.wire is not None:
        return item.wire
    from engine.rpc.convert import request_to_proto  # the contract's encoding of a request

    return bytes(request_to_proto(item.request).SerializeToString())


def encode(item: Logged) -> bytes:
    """One record (with its length prefix)."""
    d = item.decision
    wire = _wire(item)
    # column by column (no stacking on the request path): FLOATS, then the (n x components)
    # cost matrix, then INTS
    floats = (d.propensity, d.p_engage, d.p_negative, d.expected_value, d.cost, d.utility)
    numbers = [np.asarray(a, "<f8").tobytes() for a in (*floats, d.costs)]
    numbers += [np.asarray(a, "<i2").tobytes() for a in (d.rank, d.current_rank, d.reason_code)]
    model, config = d.model_version.encode(), d.config_version.encode()
    flags = (_RESERVED if item.reserved else 0) | (_STORE_OK if d.cap_store_ok else 0)
    head = _HEAD.pack(
        len(wire),
        len(d.ad_id),
        item.at,
        d.selection_propensity,
        d.no_ad_propensity,
        d.exploration_share,
        d.variant,
        flags,
        len(model),
        len(config),
    )
    body = b"".join((head, wire, model, config, *numbers))
    return _LENGTH.pack(len(body)) + body


def decode(body: bytes | memoryview) -> Record:
    """A record's body (without its length prefix).

    Raises:
        ValueError: the body is not a whole record.
    """
    view = memoryview(body)
    wire_n, n, at, selection, no_ad, share, variant, flags, model_n, config_n = _HEAD.unpack_from(
        view
    )
    at_ = _HEAD.size
    sizes = (wire_n, model_n, config_n, n * _N_FLOATS * 8, n * len(INTS) * 2)
    if at_ + sum(sizes) != len(view):
        raise ValueError(f"a spool record of {len(view)} bytes does not hold its parts {sizes}")
    parts = []
    for size in sizes:
        parts.append(view[at_ : at_ + size])
        at_ += size
    wire, model, config, floats, ints = parts
    return Record(
        wire=bytes(wire),
        at=at,
        selection_propensity=selection,
        no_ad_propensity=no_ad,
        exploration_share=share,
        variant=variant,
        reserved=bool(flags & _RESERVED),
        cap_store_ok=bool(flags & _STORE_OK),
        model_version=bytes(model).decode(),
        config_version=bytes(config).decode(),
        floats=np.hstack(
            [
                np.frombuffer(floats, "<f8", n * len(FLOATS)).reshape(len(FLOATS), n).T,
                np.frombuffer(floats, "<f8", offset=n * len(FLOATS) * 8).reshape(n, -1),
            ]
        ),
        ints=np.frombuffer(ints, "<i2").reshape(len(INTS), n).T,
    )


def read(source: BinaryIO) -> Iterator[Record]:
    """The records of a spool file, in order; a torn last record is skipped.

    Raises:
        ValueError: the file is not a spool of this format (named in the message).
    """
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"not an admatch spool of format {MAGIC.decode().strip()!r}")
    while True:
        prefix = source.read(_LENGTH.size)
        if len(prefix) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(prefix)
        body = source.read(size)
        if len(body) < size:
            return  # torn: the writer died while writing it
        yield decode(body)


class SpoolFormat:
    """A ``LogStream`` file format: spool files of decisions, each an encoded record
    (``encode``, done by the caller) or a ``Logged`` to encode here."""

    extension = EXTENSION

    def open(self, sink: Any, metadata: dict[bytes, bytes]) -> _SpoolWriter:
        sink.write(MAGIC)
        return _SpoolWriter(sink)


@dataclass
class _SpoolWriter:
    sink: Any

    def write(self, items: list[bytes | Logged]) -> int:
        self.sink.write(b"".join(i if isinstance(i, bytes) else encode(i) for i in items))
        self.sink.flush()
        return len(items)

    def close(self) -> None:
        """Nothing to finish: the stream closes the sink."""
