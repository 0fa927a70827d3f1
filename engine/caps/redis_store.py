"""The Redis cap store: one EVALSHA per request read, per impression, per atomic check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis

from engine.caps import lua
from engine.caps.keys import KeySpace
from engine.caps.plan import US, Plan, impression_counters, micros
from engine.caps.rules import CapRule, FeedbackBlock, GapRule
from engine.caps.store import (
    CapReading,
    Check,
    Feedback,
    Impression,
    StoreUnavailable,
    answer_slot,
    encode,
    scatter,
    split_answers,
)

T = TypeVar("T")
DAY_TTL_S = 400 * 86_400  # day buckets and lifetime counts live this long after the last write


class RedisCapStore:
    """See :class:`engine.caps.store.CapStore`. Works with a standalone Redis, a unix socket
    (the embedded server) and a Redis Cluster (every script's keys share one hash tag)."""

    def __init__(
        self,
        client: Any,
        rules: list[CapRule],
        gaps: list[GapRule],
        feedback: FeedbackBlock,
        keys: KeySpace | None = None,
        retention_s: int = 7 * 86_400,
        marker_ttl_s: int = 8 * 86_400,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.rules, self.gaps, self.feedback = rules, gaps, feedback
        self.keys = keys or KeySpace()
        self.retention_s = retention_s
        self.marker_ttl_s = marker_ttl_s
        self._on_close = on_close
        self._read = client.register_script(lua.READ)
        self._record = client.register_script(lua.RECORD)
        self._check_record = client.register_script(lua.CHECK_RECORD)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"cap store: {type(exc).__name__}: {exc}") from exc

    def _read_keys_args(self, plan: Plan) -> tuple[list[str], list[str]]:
        tag = self.keys.tag(plan.household_id, plan.user_id)
        keys: list[str] = []
        for c in plan.counters:
            keys.append(self.keys.events(tag, c.family, c.scope_id, c.target_id))
            keys.append(self.keys.days(tag, c.family, c.scope_id, c.target_id))
        keys += [self.keys.block(tag, *b) for b in plan.blocks]
        args = [str(plan.t_us), str(len(plan.counters)), *encode(plan), str(len(plan.blocks))]
        return keys, args

    def read(self, plan: Plan, n_rules: int, n_gaps: int) -> CapReading:
        """See :class:`CapStore`."""
        keys, args = self._read_keys_args(plan)
        flat = self._call(lambda: self._read(keys=keys, args=args))
        answers, blocks = split_answers(plan, [int(v) for v in flat])
        return scatter(plan, answers, blocks, n_rules, n_gaps)

    def _record_keys_args(self, imp: Impression) -> tuple[list[str], list[str]]:
        tag = self.keys.tag(imp.household_id, imp.user_id)
        keys = [self.keys.impression(tag, imp.impression_id)]
        for c in impression_counters(imp.ids(), imp.touchpoint, imp.slot, self.rules, self.gaps):
            keys.append(self.keys.events(tag, c.family, c.scope_id, c.target_id))
            keys.append(self.keys.days(tag, c.family, c.scope_id, c.target_id))
        t = micros(imp.ts)
        args = [
            imp.impression_id,
            str(t),
            str(t // (86_400 * US)),
            str(self.retention_s * US),
            str(self.retention_s + 3_600),
            str(DAY_TTL_S),
            str(self.marker_ttl_s),
        ]
        return keys, args

    def record(self, impressions: list[Impression]) -> int:
        """See :class:`CapStore`. One pipelined round trip on a standalone server."""
        if not impressions:
            return 0

        def run() -> int:
            if isinstance(self.client, redis.cluster.RedisCluster):
                return sum(int(self._record(*self._record_keys_args(i))) for i in impressions)
            pipe = self.client.pipeline(transaction=False)
            for imp in impressions:
                keys, args = self._record_keys_args(imp)
                self._record(keys=keys, args=args, client=pipe)
            return sum(int(v) for v in pipe.execute())

        return self._call(run)

    def check_and_record(self, impression: Impression, plan: Plan, checks: list[Check]) -> int:
        """See :class:`CapStore`."""
        read_keys, read_args = self._read_keys_args(plan)
        rec_keys, rec_args = self._record_keys_args(impression)
        check_args = [str(len(checks))]
        for chk in checks:
            slot = answer_slot(plan, chk.counter, chk.kind, chk.window)
            kind = {"window": "w", "days": "d", "since": "g"}[chk.kind]
            threshold = chk.threshold * US if kind == "g" else chk.threshold
            check_args += [str(chk.counter + 1), kind, str(slot), repr(float(threshold))]
        keys = read_keys + rec_keys
        args = read_args + check_args + rec_args
        return int(self._call(lambda: self._check_record(keys=keys, args=args)))

    def block(self, feedback: list[Feedback]) -> int:
        """See :class:`CapStore`. Each block stores its end (event time) and expires with it."""
        fb = self.feedback
        sets: list[tuple[str, int]] = []
        for f in feedback:
            target_id = f.campaign_id if fb.target == "campaign" else f.advertiser_id
            if f.kind not in fb.kinds or target_id is None:
                continue
            tag = self.keys.tag(f.household_id, f.user_id)
            until = micros(f.ts) + fb.duration_s * US
            sets.append((self.keys.block(tag, "user", f.user_id, fb.target, target_id), until))
            if fb.household and f.household_id:
                key = self.keys.block(tag, "household", f.household_id, fb.target, target_id)
                sets.append((key, until))

        def run() -> int:
            for key, until in sets:  # keep the latest end if blocked twice
                current = self.client.get(key)
                if current is None or int(current) < until:
                    self.client.set(key, until, ex=fb.duration_s)
            return len(sets)

        return self._call(run)

    def close(self) -> None:
        """Close the connection pool (and stop the embedded server, if any)."""
        try:
            self.client.close()
        finally:
            if self._on_close is not None:
                self._on_close()
