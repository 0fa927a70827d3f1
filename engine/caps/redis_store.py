"""The Redis cap store: one EVALSHA per request read, per impression, per atomic check."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from engine.caps import lua
from engine.caps.keys import KeySpace
from engine.caps.plan import US, Plan, impression_writes, micros
from engine.caps.rules import CapRule, Family, FeedbackBlock, GapRule
from engine.caps.store import (
    CapReading,
    Check,
    Feedback,
    Impression,
    StoreUnavailable,
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
        # Families that keep day and lifetime counts: those a long-window rule reads, and the
        # campaign families, since campaigns may bring their own long caps with a request.
        long_rules = {r.family() for r in rules if r.window_s is None or r.window_s > retention_s}
        campaigns = {Family(scope=s, target="campaign") for s in ("user", "household", "device")}
        self._long = long_rules | campaigns
        self._read = client.register_script(lua.READ)
        self._record = client.register_script(lua.RECORD)
        self._check_record = client.register_script(lua.CHECK_RECORD)
        self._block = client.register_script(lua.BLOCK)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"cap store: {type(exc).__name__}: {exc}") from exc

    def _family_keys(self, tag: str, family: Family, scope_id: str) -> list[str]:
        return [
            self.keys.recent(tag, family, scope_id),
            self.keys.days(tag, family, scope_id),
            self.keys.lifetime(tag, family, scope_id),
        ]

    def _read_keys_args(self, plan: Plan) -> tuple[list[str], list[str]]:
        tag = self.keys.tag(plan.household_id, plan.user_id)
        keys: list[str] = []
        for lk in plan.lookups:
            keys += self._family_keys(tag, lk.family, lk.scope_id)
        keys += [self.keys.blocks(tag, *b) for b in plan.blocks]
        return keys, [encode(plan)]

    def read(self, plan: Plan, n_rules: int, n_gaps: int) -> CapReading:
        """See :class:`CapStore`."""
        keys, args = self._read_keys_args(plan)
        flat = self._call(lambda: self._read(keys=keys, args=args))
        answers, blocks = split_answers(plan, flat)
        return scatter(plan, answers, blocks, n_rules, n_gaps)

    def _record_keys_args(self, imp: Impression) -> tuple[list[str], list[str]]:
        tag = self.keys.tag(imp.household_id, imp.user_id)
        keys = [self.keys.impression(tag, imp.impression_id)]
        writes: list[str] = []
        for family, scope_id, field in impression_writes(
            imp.ids(), imp.touchpoint, imp.slot, self.rules, self.gaps
        ):
            keys += self._family_keys(tag, family, scope_id)
            writes += [
                "A" if family.target == "any" else "T",
                field,
                "1" if family in self._long else "0",
            ]
        t = micros(imp.ts)
        args = [
            imp.impression_id,
            str(t),
            str(t // (86_400 * US)),
            str(self.retention_s * US),
            str(self.retention_s + 3_600),
            str(DAY_TTL_S),
            str(self.marker_ttl_s),
            *writes,
        ]
        return keys, args

    def record(self, impressions: list[Impression]) -> int:
        """See :class:`CapStore`. One pipelined round trip on a standalone server."""
        if not impressions:
            return 0

        def run() -> int:
            if isinstance(self.client, redis.cluster.RedisCluster):
                total = 0
                for imp in impressions:
                    keys, args = self._record_keys_args(imp)
                    total += int(self._record(keys=keys, args=args))
                return total
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
        encoded = []
        for chk in checks:
            slot = plan.lookups[chk.lookup].slots().index((chk.kind, chk.window)) + 1
            kind = {"window": "w", "days": "d", "since": "g"}[chk.kind]
            threshold = chk.threshold * US if kind == "g" else chk.threshold
            encoded.append([chk.lookup + 1, kind, slot, threshold])
        keys = read_keys + rec_keys
        args = [*read_args, json.dumps(encoded), *rec_args]
        return int(self._call(lambda: self._check_record(keys=keys, args=args)))

    def block(self, feedback: list[Feedback]) -> int:
        """See :class:`CapStore`. Each block stores its end (event time); a later end wins."""
        fb = self.feedback
        sets: list[tuple[str, str, int]] = []
        for f in feedback:
            target_id = f.campaign_id if fb.target == "campaign" else f.advertiser_id
            if f.kind not in fb.kinds or target_id is None:
                continue
            tag = self.keys.tag(f.household_id, f.user_id)
            until = micros(f.ts) + fb.duration_s * US
            sets.append((self.keys.blocks(tag, "user", f.user_id, fb.target), target_id, until))
            if fb.household and f.household_id:
                key = self.keys.blocks(tag, "household", f.household_id, fb.target)
                sets.append((key, target_id, until))

        def run() -> int:
            for key, field, until in sets:
                self._block(keys=[key], args=[field, str(until), str(fb.duration_s)])
            return len(sets)

        return self._call(run)

    def close(self) -> None:
        """Close the connection pool (and stop the embedded server, if any)."""
        try:
            self.client.close()
        finally:
            if self._on_close is not None:
                self._on_close()
