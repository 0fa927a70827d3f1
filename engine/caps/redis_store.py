"""The Redis cap store: one EVALSHA per request read, per impression batch, per atomic check.

This module turns plans and impressions into the scripts' KEYS and ARGV (see ``lua.py`` for
their layout) and the read's reply into answer matrices; the counting happens in Redis.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.typing import EncodableT

from engine.caps import lua
from engine.caps.direct import DirectConnections
from engine.caps.keep import keep_policy
from engine.caps.keys import KeySpace, escape, family_code, fingerprint
from engine.caps.plan import (
    ANY,
    DAY_US,
    US,
    Plan,
    Shape,
    impression_families,
    micros,
)
from engine.caps.rules import (
    COMPETITOR,
    SCOPE_COLUMN,
    TARGET_COLUMN,
    BlockRule,
    CapRule,
    CapsConfig,
    GapRule,
    competitor_ids,
)
from engine.caps.store import (
    Attempt,
    CapReading,
    Check,
    Feedback,
    Impression,
    Rows,
    StoreUnavailable,
    block_writes,
    place,
)
from engine.errors import AdmatchError, InvalidArgument

log = logging.getLogger(__name__)
T = TypeVar("T")
HOUR_US = 3_600 * US
_CACHE_SIZE = 4_096
_Spec = tuple[Shape, bytes, list[str]]  # shape, READ spec, per lookup its family code
_Write = tuple[str, str, str | None, list[int]]  # family code, scope and target column, policy
_Call = tuple[list[str], list[EncodableT]]  # a script call's KEYS and ARGV


def decode_read(plan: Plan, reply: bytes) -> tuple[Rows, np.ndarray]:
    """The READ reply (big-endian doubles) as the fields with history of each group and their
    answers, and, per candidate, whether a block covers it."""
    values = np.frombuffer(reply, dtype=">f8").astype(np.float64)  # native: one byte swap
    rows: Rows = []
    pos = 0
    for width in plan.shape.widths:
        size = int(values[pos])
        if size:
            found = values[pos + 1 : pos + 1 + size].reshape(-1, width + 1)
            rows.append((found[:, 0].astype(np.int64) - 1, found[:, 1:]))
        else:
            rows.append(None)
        pos += 1 + size
    flags = []
    for spec in plan.shape.blocks:  # per block spec: the number of blocked fields, their indices
        size = int(values[pos])
        if size:
            flagged = np.zeros(len(plan.block_fields(spec)), dtype=bool)
            flagged[values[pos + 1 : pos + 1 + size].astype(np.int64) - 1] = True
            flags.append(flagged)
        else:
            flags.append(_NONE_FLAGGED)
        pos += 1 + size
    return rows, plan.blocked(flags)


_NONE_FLAGGED = np.zeros(0, dtype=bool)


def _reading(plan: Plan, reply: object) -> CapReading | AdmatchError:
    """A plan's reading from its READ reply, or the error the store answered it with."""
    if isinstance(reply, AdmatchError):
        return reply
    if isinstance(reply, Exception):
        return _unavailable(reply)
    return place(plan, *decode_read(plan, cast("bytes", reply)))


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"cap store: {type(exc).__name__}: {exc}")


def _names(ids: list[str], column: str | None) -> bytes:
    """Ids as one script argument: their count, their byte lengths, then their bytes."""
    if not ids:
        return b""
    try:
        text = "".join(ids)
        if text.isascii():  # one byte per character: no per-id encoding
            data, sizes = text.encode("ascii"), list(map(len, ids))
        else:
            encoded = [i.encode() for i in ids]
            data, sizes = b"".join(encoded), list(map(len, encoded))
        return struct.pack(f">I{len(ids)}H", len(ids), *sizes) + data
    except (TypeError, struct.error) as exc:
        raise InvalidArgument(str(column), f"ids must be strings under 64 KiB: {exc}") from exc


def _numbers(values: list[int]) -> bytes:
    """Integers as one script argument of big-endian doubles (exact below 2**53)."""
    return struct.pack(f">{len(values)}d", *values)


class RedisCapStore:
    """See :class:`engine.caps.store.CapStore`. Works with a standalone Redis, a unix socket
    (the embedded server) and a Redis Cluster (every script's keys share one hash tag)."""

    def __init__(
        self,
        client: Any,
        rules: list[CapRule],
        gaps: list[GapRule],
        blocks: list[BlockRule],
        keys: KeySpace | None = None,
        retention_s: int = 7 * 86_400,
        horizon_s: int = 3 * 86_400,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
        deadline_s: float | None = None,
        ahead_s: int = 0,
        campaign_times: int = 10,
        competing: Mapping[str, str] | None = None,
    ) -> None:
        """Each counter keeps what its family's readers need (``keep.py``) for reads no earlier
        than ``ahead_s`` before its newest impression (the service refuses impressions timed
        later than that: ``store.max_ahead``); campaign counters keep ``campaign_times`` latest
        times for the requests' own caps over exact windows. An impression
        id reported again within ``horizon_s`` of its first report (by ``clock``, the arrival
        time) is a duplicate; its marker lives under its arrival day, kept ``horizon_s`` and a
        day more. ``competing``: category -> its competition label
        (``CapsConfig.competitor_of``), the id of an impression's ``competitor`` families."""
        self.client = client
        self.competing = dict(competing or {})
        self.deadline_s = deadline_s  # the longest any call waits (requests may allow less)
        self.rules, self.gaps, self.blocks = rules, gaps, blocks
        self.keys = keys or KeySpace()
        self.retention_s = retention_s
        self.ahead_s = ahead_s
        self.campaign_times = campaign_times  # the latest times a campaign counter keeps
        self.horizon_s = horizon_s  # how long an impression id stays known (dedup)
        self.marker_days = -(-horizon_s // 86_400)  # earlier arrival days a retry may follow
        self.clock = clock  # the arrival day of impressions (markers), seconds since the epoch
        self._on_close = on_close
        self._specs: dict[int, _Spec] = {}
        self._writes: dict[tuple[str, str], list[_Write]] = {}
        self._configuring = threading.Lock()  # a reload's rules against the writes' cache
        self._read = client.register_script(lua.READ)
        self._record = client.register_script(lua.RECORD)
        self._check_record = client.register_script(lua.CHECK_RECORD)
        self._block = client.register_script(lua.BLOCK)
        self._direct = None if isinstance(client, RedisCluster) else DirectConnections(client)

    def load_scripts(self) -> bool:
        """Load the scripts into the server now, so that the first calls after a start do not
        meet NOSCRIPT and pay a round trip more. Best effort: ``False`` when the server does
        not answer (each script is then loaded on first use, as after a restart)."""
        try:
            for script in (self._read, self._record, self._check_record, self._block):
                self.client.script_load(script.script)
        except redis.exceptions.RedisError as exc:
            log.warning("cap store scripts not loaded now (%s): loaded on first use", exc)
            return False
        return True

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from exc

    def _timeout(self, budget_s: float | None) -> float | None:
        """How long a call may wait for a reply: the request's time left, never longer than
        the store's deadline (``None``: the connection's own timeout, the deadline)."""
        if budget_s is None:
            return None
        if self.deadline_s is not None:
            budget_s = min(budget_s, self.deadline_s)
        return max(budget_s, 0.001)

    def _eval(
        self, script: Script, keys: list[str], args: list[EncodableT], budget_s: float | None = None
    ) -> Any:
        """One EVALSHA: a pipeline of one call (:meth:`_pipeline`).

        Raises:
            redis.exceptions.RedisError: no answer in time, or the server's error reply.
        """
        reply = self._pipeline(script, [(keys, args)], budget_s)[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _spec(self, shape: Shape) -> _Spec:
        """The shape's READ spec (see ``lua.py``) and its lookups' family codes (cached)."""
        spec = self._specs.get(id(shape))
        if spec is None or spec[0] is not shape:
            numbers: list[int] = [len(shape.columns)]
            for g, width in enumerate(shape.widths):
                mine = [lk for lk in shape.lookups if lk.group == g]
                numbers += [width, len(mine)]
                for lk in mine:
                    numbers += [lk.mode, lk.offset, len(lk.windows), len(lk.day_windows)]
                    numbers += [len(lk.buckets), int(lk.last), *(w * US for w in lk.windows)]
                    numbers += [*lk.day_windows, *(x for pair in lk.buckets for x in pair)]
            numbers.append(len(shape.blocks))
            for b in shape.blocks:
                numbers += [b.group + 1, len(b.scopes)]
            codes = [family_code(lk.family) for lk in shape.lookups]
            if len(self._specs) >= _CACHE_SIZE:
                self._specs.clear()
            spec = self._specs[id(shape)] = (shape, _numbers(numbers), codes)
        return spec

    def _read_keys_args(self, plan: Plan) -> _Call:
        shape, spec, codes = self._spec(plan.shape)
        tag = self.keys.tag(plan.household_id, plan.user_id)
        base = self.keys.base(tag)
        scope_ids = {
            "user": escape(plan.user_id),
            "household": escape(plan.household_id or ""),
            "device": escape(plan.device_id or ""),
        }
        keys = [
            self.keys.counters_at(base, code, scope_ids[lk.family.scope])
            for lk, code in zip(shape.lookups, codes, strict=True)
        ]
        keys += [self.keys.blocks(tag, *b) for b in plan.blocks]
        t = plan.t_us
        args: list[EncodableT] = [t, t // DAY_US, t // HOUR_US, spec]
        args += [_names(f, c) for f, c in zip(plan.fields, shape.columns, strict=True)]
        return keys, args

    def read(self, plan: Plan, budget_s: float | None = None) -> CapReading:
        """See :class:`CapStore`."""
        keys, args = self._read_keys_args(plan)
        reply = self._call(lambda: self._eval(self._read, keys, args, budget_s))
        return place(plan, *decode_read(plan, reply))

    def read_many(
        self, plans: Sequence[Plan], budget_s: float | None = None
    ) -> list[CapReading | AdmatchError]:
        """See :class:`CapStore`: the plans' READ calls in one pipeline (:meth:`_pipeline`); a
        plan whose ids cannot be sent is not sent."""
        calls: list[_Call] = []
        refused: dict[int, AdmatchError] = {}
        for i, plan in enumerate(plans):
            try:
                calls.append(self._read_keys_args(plan))
            except InvalidArgument as exc:
                refused[i] = exc
        replies: list[object] = []
        if calls:
            try:
                replies = self._call(lambda: self._pipeline(self._read, calls, budget_s))
            except StoreUnavailable as exc:  # no answer at all: every plan sent fails
                replies = [exc] * len(calls)
        answers = iter(replies)
        return [
            refused[i] if i in refused else _reading(plan, next(answers))
            for i, plan in enumerate(plans)
        ]

    def _family_writes(self, touchpoint: str, slot: str) -> list[_Write]:
        """What an impression on this touchpoint and slot writes (cached)."""
        writes = self._writes.get((touchpoint, slot))
        if writes is not None:
            return writes
        with self._configuring:  # the rules and gaps of one config, into its cache
            writes = [
                (
                    family_code(fam),
                    SCOPE_COLUMN[fam.scope],
                    TARGET_COLUMN[fam.target],
                    keep_policy(
                        fam,
                        self.rules,
                        self.gaps,
                        self.retention_s,
                        self.ahead_s,
                        self.campaign_times,
                    ).numbers(),
                )
                for fam in impression_families(touchpoint, slot, self.rules, self.gaps)
            ]
            self._writes[(touchpoint, slot)] = writes
        return writes

    def configure(self, caps: CapsConfig) -> None:
        """See :class:`CapStore`. An impression recorded while this runs may still be written
        by the rules before it."""
        with self._configuring:
            self.rules, self.gaps, self.blocks = caps.rules, caps.gap_rules, caps.block_rules
            self.competing = dict(caps.competitor_of)
            self._writes = {}

    def _record_keys_args(self, imp: Impression, today: int) -> _Call:
        """``today``: the arrival day (the markers'), read once per call of the store."""
        tag = self.keys.tag(imp.household_id, imp.user_id)
        base = self.keys.base(tag)
        keys = [self.keys.markers(tag, today - k) for k in range(self.marker_days, -1, -1)]
        policies: list[int] = []
        targets = []
        for code, scope_column, target_column, policy in self._family_writes(
            imp.touchpoint, imp.slot
        ):
            scope_id = getattr(imp, scope_column)
            if target_column is None:
                target_id: str | None = ANY
            elif target_column == COMPETITOR:
                target_id = competitor_ids(imp.ids(), self.competing)[COMPETITOR]
            else:
                target_id = getattr(imp, target_column)
            if scope_id is not None and target_id is not None:
                keys.append(self.keys.counters_at(base, code, escape(scope_id)))
                policies += policy
                targets.append(target_id)
        t = micros(imp.ts)
        args: list[EncodableT] = [
            t,
            t // DAY_US,
            t // HOUR_US,
            self.horizon_s + 86_400,
            _numbers(policies),
            _names(targets, "impression"),
            fingerprint(imp.impression_id),
            self.marker_days + 1,
        ]
        return keys, args

    def _today(self) -> int:
        """The arrival day: markers go by it (a retry follows its first try soon)."""
        return int(self.clock() // 86_400)

    def record(self, impressions: list[Impression]) -> int:
        """See :class:`CapStore`. One pipelined round trip (per cluster node)."""
        if not impressions:
            return 0
        today = self._today()
        calls = [self._record_keys_args(imp, today) for imp in impressions]
        results = self._call(lambda: self._pipeline(self._record, calls))
        for result in results:
            if isinstance(result, Exception):
                raise _unavailable(result) from result
        return sum(cast("list[int]", results))

    def _pipeline(
        self, script: Script, calls: list[_Call], budget_s: float | None = None
    ) -> list[object]:
        """Calls of one script in one round trip (a cluster's: one per node), without the
        SCRIPT EXISTS redis-py sends first for scripts; a server that lost the script (restart,
        SCRIPT FLUSH) gets it again and the refused calls are sent once more.

        Returns:
            Per call, in order, its reply, or the error the server answered it with.

        Raises:
            redis.exceptions.RedisError: no answer (connection lost, timeout).
        """
        results = self._send(script.sha, calls, budget_s)
        refused = [
            k for k, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if refused:
            self.client.script_load(script.script)  # on a cluster: every primary
            again = self._send(script.sha, [calls[k] for k in refused], budget_s)
            for k, result in zip(refused, again, strict=True):
                results[k] = result
        return results

    def _send(self, sha: str, calls: list[_Call], budget_s: float | None) -> list[object]:
        """EVALSHA calls in one round trip. On a standalone server straight through a
        connection of the store's own (``direct.py``: redis-py's pool and per-command path cost
        20-50 us a call here, and its retries are off anyway, ``connect.client_options``); it
        waits at most ``budget_s`` (:meth:`_timeout`). On a cluster, redis-py's cluster
        pipeline (one round trip per node, every node's calls sent before any answer is read;
        the deadline bounds it)."""
        if self._direct is not None:
            commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
            return self._direct.execute(commands, self._timeout(budget_s))
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            # a cluster pipeline would ask the server for an EVALSHA's keys (COMMAND GETKEYS,
            # one round trip each) unless told the node
            node = self.client.get_node_from_key(keys[0])
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args, target_nodes=node)
        results: list[object] = pipe.execute(raise_on_error=False)
        return results

    def check_and_record(
        self, attempts: Sequence[Attempt], budget_s: float | None = None
    ) -> list[int | StoreUnavailable]:
        """See :class:`CapStore`: one CHECK_RECORD script for the attempts of one hash tag
        (all of a request's: its household's), so the selection is checked and recorded as
        one atomic unit; the scripts of several tags in one pipelined round trip."""
        today = self._today()
        by_tag: dict[str, list[int]] = {}
        for i, (impression, _, _) in enumerate(attempts):
            tag = self.keys.tag(impression.household_id, impression.user_id)
            by_tag.setdefault(tag, []).append(i)
        calls: list[_Call] = []
        for members in by_tag.values():
            keys: list[str] = []
            args: list[EncodableT] = [len(members)]
            for i in members:
                k, a = self._check_call(*attempts[i], today)
                keys += k
                args += [len(k), len(a), *a]
            calls.append((keys, args))
        if not calls:
            return []
        replies = self._call(lambda: self._pipeline(self._check_record, calls, budget_s))
        out: list[int | StoreUnavailable] = [0] * len(attempts)
        for members, reply in zip(by_tag.values(), replies, strict=True):
            for n, i in enumerate(members):
                out[i] = (
                    _unavailable(reply)
                    if isinstance(reply, Exception)
                    else int(cast("list[int]", reply)[n])
                )
        return out

    def _check_call(
        self, impression: Impression, plan: Plan, checks: list[Check], today: int
    ) -> _Call:
        read_keys, read_args = self._read_keys_args(plan)
        rec_keys, rec_args = self._record_keys_args(impression, today)
        encoded: list[int] = []
        for chk in checks:
            gap = chk.kind == "since"
            threshold = round(chk.threshold * US) if gap else round(chk.threshold)
            encoded += [chk.group + 1, chk.column + 1, int(gap), threshold]
        args = [len(rec_keys), *rec_args, *read_args, _numbers(encoded)]
        return rec_keys + read_keys, args

    def block(self, feedback: list[Feedback]) -> int:
        """See :class:`CapStore`. Each block stores its end (event time); a later end wins. One
        pipelined round trip (per cluster node)."""
        calls: list[_Call] = []
        for w in block_writes(self.blocks, feedback):
            tag = self.keys.tag(w.event.household_id, w.event.user_id)
            key = self.keys.blocks(tag, w.scope, w.scope_id, w.target)
            calls.append(([key], [w.target_id, str(w.until_us), str(w.ttl_s)]))
        if not calls:
            return 0
        results = self._call(lambda: self._pipeline(self._block, calls))
        for result in results:
            if isinstance(result, Exception):
                raise _unavailable(result) from result
        return len(calls)

    def ping(self, budget_s: float | None = None) -> None:
        """See :class:`CapStore`: one PING."""
        direct = self._direct
        if direct is not None:
            timeout = self._timeout(budget_s)
            self._call(lambda: direct.execute([("PING",)], timeout))
        else:
            self._call(self.client.ping)

    def close(self) -> None:
        """Close the connections (and stop the embedded server, if any)."""
        try:
            if self._direct is not None:
                self._direct.close()
            self.client.close()
        finally:
            if self._on_close is not None:
                self._on_close()
