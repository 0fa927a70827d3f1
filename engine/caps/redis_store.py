"""The Redis cap store (key layout 6): one EVALSHA per request read, per impression batch,
per request's reservations (uncontended).

Redis keeps each household's event log, dictionary and day counts (``eventlog.py``) and appends
to them atomically; the client reads them whole and computes every answer (``eventlog.answers``),
so Redis does little more per read than a few GETs. A reservation is checked in the client on
a snapshot (the request's own read when there is one) and committed only if the household has
not changed since (its log's length and generation): one round trip when nothing raced it,
another per conflict (the commit's reply is the fresh snapshot). The log of a household is
folded into day counts about once a day (``eventlog.fold``) by the writer
that notices it is due.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar, cast

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.typing import EncodableT

from engine.caps import eventlog, lua
from engine.caps.direct import DirectConnections
from engine.caps.keep import LONG_TTL_S, log_span_s, read_targets, summaries
from engine.caps.keys import KeySpace, fingerprint
from engine.caps.plan import DAY_US, Plan, micros
from engine.caps.rules import BlockRule, CapRule, CapsConfig, GapRule
from engine.caps.store import (
    BLOCK_REFUSAL,
    Attempt,
    CapReading,
    Feedback,
    Impression,
    StoreUnavailable,
    block_writes,
    place,
    refusal,
)
from engine.errors import AdmatchError

log = logging.getLogger(__name__)
T = TypeVar("T")
_Call = tuple[list[str], list[EncodableT]]  # a script call's KEYS and ARGV
_Who = tuple[str, str, str | None]  # a snapshot's tag, user and household
_RECENT = 512  # snapshots kept for the reservations that follow a read (~20-30 KB each)
_TRIES = 16  # commits of one reservation before the store is taken for unavailable
FOLD_SLACK_DAYS = 1  # a log is folded when its first impression is this much older than needed


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"cap store: {type(exc).__name__}: {exc}")


@contextmanager
def _readable(who: _Who) -> Iterator[None]:
    """Bytes of a household the client cannot decode (another version's, or damaged) fail
    its call as the store's (closed or open, counted), naming the household's hash tag,
    instead of failing the pass they were read in."""
    try:
        yield
    except (ValueError, IndexError) as exc:
        raise StoreUnavailable(f"cap store: the data of {who[0]} is unreadable: {exc}") from exc


def reading(plan: Plan, snapshot: eventlog.Snapshot) -> CapReading:
    """A plan's reading from a snapshot of its household."""
    matrices = eventlog.answers(plan, snapshot.log)
    return place(plan, matrices, eventlog.blocked(plan, snapshot.blocks))


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
        competing: Mapping[str, str] | None = None,
    ) -> None:
        """A household's log keeps every impression for what its reads count exactly
        (``keep.log_span_s``: rule windows up to the retention, minimum gaps, the exposure
        features' 24 hours; and ``ahead_s``, a day and ``FOLD_SLACK_DAYS`` more): those are
        exact for reads no earlier than ``ahead_s`` before its newest impression (the service
        refuses impressions timed later than that: ``store.max_ahead``). An impression id
        reported again within ``horizon_s`` of its first report (by ``clock``, the arrival
        time) is a duplicate; its marker lives under its arrival day, kept ``horizon_s`` and a
        day more. ``competing``: category -> its competition label
        (``CapsConfig.competitor_of``), recorded with each impression."""
        self.client = client
        self.deadline_s = deadline_s  # the longest any call waits (requests may allow less)
        self.keys = keys or KeySpace()
        self.retention_s = retention_s
        self.ahead_s = ahead_s
        self.horizon_s = horizon_s  # how long an impression id stays known (dedup)
        self.marker_days = -(-horizon_s // 86_400)  # earlier arrival days a retry may follow
        self.clock = clock  # the arrival day of impressions (markers), seconds since the epoch
        self._on_close = on_close
        self._apply(rules, gaps, blocks, competing or {})
        self._recent: dict[_Who, eventlog.Snapshot] = {}  # the last read's, for reservations
        self._read = client.register_script(lua.READ)
        self._record = client.register_script(lua.RECORD)
        self._commit = client.register_script(lua.COMMIT)
        self._fold = client.register_script(lua.FOLD)
        self._block = client.register_script(lua.BLOCK)
        self._direct = None if isinstance(client, RedisCluster) else DirectConnections(client)

    def _apply(
        self,
        rules: list[CapRule],
        gaps: list[GapRule],
        blocks: list[BlockRule],
        competing: Mapping[str, str],
    ) -> None:
        """Take a config's rules: what the folds keep, how long a household's data lives,
        which block hashes a read fetches, the competition labels impressions record. (A
        call running meanwhile may mix the old and the new: every answer is computed from
        the log whatever the rules were.)"""
        self.rules, self.gaps, self.blocks = rules, gaps, blocks
        self.competing = dict(competing)
        self.kept = summaries(rules, self.retention_s)
        self.log_span_s = log_span_s(rules, gaps, self.retention_s)
        self.recorded = eventlog.recorded_columns(read_targets(rules, gaps))
        long = any(k.days or k.life for k in self.kept)
        self.ttl_s = LONG_TTL_S if long else self.retention_s + self.ahead_s + 3 * 86_400
        self.block_targets = sorted({b.target for b in blocks})

    def configure(self, caps: CapsConfig) -> None:
        """See :class:`CapStore`. Every family is computed from the log, so a rule a reload
        adds counts the impressions the log holds (of a target the log recorded: an ad's ids
        no reader counted by are not recorded, ``recorded``); the summaries keep, from the
        next fold on, what the new rules need."""
        self._apply(caps.rules, caps.gap_rules, caps.block_rules, caps.competitor_of)

    def load_scripts(self) -> bool:
        """Load the scripts into the server now, so that the first calls after a start do not
        meet NOSCRIPT and pay a round trip more. Best effort: ``False`` when the server does
        not answer (each script is then loaded on first use, as after a restart)."""
        try:
            for script in (self._read, self._record, self._commit, self._fold, self._block):
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

    def _block_keys(self, who: _Who) -> list[tuple[str, str, str]]:
        """(scope, target, key) of every block hash a snapshot of ``who`` holds: the user's
        and, with a household, the household's, of every block target."""
        tag, user_id, household_id = who
        out: list[tuple[str, str, str]] = []
        for target in self.block_targets:
            out.append(("user", target, self.keys.blocks(tag, "user", user_id, target)))
            if household_id:
                key = self.keys.blocks(tag, "household", household_id, target)
                out.append(("household", target, key))
        return out

    def _who(self, household_id: str | None, user_id: str) -> _Who:
        return (self.keys.tag(household_id, user_id), user_id, household_id)

    def _read_call(self, who: _Who) -> _Call:
        blocks = [key for _, _, key in self._block_keys(who)]
        return [*self.keys.parts(who[0]), *blocks], []

    def _snapshot(self, who: _Who, reply: Sequence[Any]) -> eventlog.Snapshot:
        """A READ reply (or a conflicting COMMIT's, without its first value) as a snapshot."""
        events, ids, tuples, days, generation = reply[:5]
        parts = eventlog.Parts(ids, tuples, events, days)
        blocks: dict[tuple[str, str], dict[str, int]] = {}
        for (scope, target, _), flat in zip(self._block_keys(who), reply[5:], strict=False):
            if flat:
                values = {k.decode(): int(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
                blocks[(scope, target)] = values
        return eventlog.Snapshot(eventlog.Log(parts), blocks, (len(events), bytes(generation)))

    def _remember(self, who: _Who, snapshot: eventlog.Snapshot) -> None:
        if len(self._recent) >= _RECENT:
            self._recent.clear()
        self._recent[who] = snapshot

    def _reading(self, who: _Who, plan: Plan, reply: object) -> CapReading | AdmatchError:
        """A plan's reading from its READ reply, or the error the store answered it with."""
        if isinstance(reply, AdmatchError):
            return reply
        if isinstance(reply, Exception):
            return _unavailable(reply)
        try:
            with _readable(who):
                snapshot = self._snapshot(who, cast("list[Any]", reply))
                answer = reading(plan, snapshot)
        except StoreUnavailable as exc:
            return exc
        self._remember(who, snapshot)
        return answer

    def read(self, plan: Plan, budget_s: float | None = None) -> CapReading:
        """See :class:`CapStore`."""
        who = self._who(plan.household_id, plan.user_id)
        keys, args = self._read_call(who)
        reply = self._call(lambda: self._eval(self._read, keys, args, budget_s))
        answer = self._reading(who, plan, reply)
        if isinstance(answer, AdmatchError):
            raise answer
        return answer

    def read_many(
        self, plans: Sequence[Plan], budget_s: float | None = None
    ) -> list[CapReading | AdmatchError]:
        """See :class:`CapStore`: the plans' READ calls in one pipeline (:meth:`_pipeline`)."""
        if not plans:
            return []
        whos = [self._who(p.household_id, p.user_id) for p in plans]
        calls = [self._read_call(who) for who in whos]
        replies: list[object]
        try:
            replies = self._call(lambda: self._pipeline(self._read, calls, budget_s))
        except StoreUnavailable as exc:  # no answer at all: every plan fails
            replies = [exc] * len(calls)
        return [
            self._reading(who, plan, reply)
            for who, plan, reply in zip(whos, plans, replies, strict=True)
        ]

    def _today(self) -> int:
        """The arrival day: markers go by it (a retry follows its first try soon)."""
        return int(self.clock() // 86_400)

    def _due_us(self, t_us: int) -> int:
        """A log whose first impression is older than this is due a fold."""
        cut = eventlog.fold_cut(t_us, self.log_span_s, self.ahead_s)
        return (cut - FOLD_SLACK_DAYS) * DAY_US

    def _markers(self, tag: str, today: int) -> list[str]:
        return [self.keys.markers(tag, today - k) for k in range(self.marker_days, -1, -1)]

    def _record_call(self, imp: Impression, today: int) -> _Call:
        """``today``: the arrival day (the markers'), read once per call of the store."""
        tag = self.keys.tag(imp.household_id, imp.user_id)
        ts, ids = eventlog.impression_bytes(imp, self.competing, self.recorded)
        keys = [*self.keys.parts(tag), *self._markers(tag, today)]
        args: list[EncodableT] = [
            fingerprint(imp.impression_id),
            self.marker_days + 1,
            self.horizon_s + 86_400,
            ts,
            ids,
            self.ttl_s,
            self._due_us(micros(imp.ts)),
        ]
        return keys, args

    def record(self, impressions: list[Impression]) -> int:
        """See :class:`CapStore`. One pipelined round trip (per cluster node); then, for the
        households whose log is due, a fold (about once a day each)."""
        if not impressions:
            return 0
        today = self._today()
        calls = [self._record_call(imp, today) for imp in impressions]
        results = self._call(lambda: self._pipeline(self._record, calls))
        due: dict[_Who, None] = {}
        for imp, result in zip(impressions, results, strict=True):
            if isinstance(result, Exception):
                raise _unavailable(result) from result
            if cast("int", result) == 3:
                due[self._who(imp.household_id, imp.user_id)] = None
        for who in due:
            self._fold_now(who)
        return sum(1 for r in results if cast("int", r) > 0)

    def _fold_now(self, who: _Who, snapshot: eventlog.Snapshot | None = None) -> bool:
        """Fold a household's log (from a fresh read unless given its snapshot); ``False``
        when it changed meanwhile, or when the fold could not be done (the store did not
        answer, its bytes could not be decoded: logged). The next write that finds it due
        folds it: a fold is upkeep after a write, which it never fails."""
        try:
            return self._folded(who, snapshot)
        except StoreUnavailable as exc:
            log.warning("cap store: fold of %s skipped: %s", who[0], exc)
            return False

    def _folded(self, who: _Who, snapshot: eventlog.Snapshot | None) -> bool:
        if snapshot is None:
            read = partial(self._eval, self._read, *self._read_call(who))
            reply = self._call(read)
            with _readable(who):
                snapshot = self._snapshot(who, reply)
        events = snapshot.log.t
        if not len(events):
            return True
        cut = eventlog.fold_cut(int(events.max()), self.log_span_s, self.ahead_s)
        with _readable(who):
            parts = eventlog.fold(snapshot.log, cut, self.kept, household=who[2] is not None)
        length, generation = snapshot.version
        args: list[EncodableT] = [length, generation, self.ttl_s]
        args += [parts.events, parts.ids, parts.tuples, parts.days]
        keys = self.keys.parts(who[0])
        return bool(self._call(lambda: self._eval(self._fold, keys, args)))

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
        """See :class:`CapStore`. The attempts of one household (all of a request's) are
        checked in order on a snapshot of it (the request's own read, when this store made
        it) and committed together only if the household has not changed since: one round
        trip when nothing raced them (a read first without a snapshot), one more per
        conflict. Households are committed one after the other."""
        out: list[int | StoreUnavailable] = [0] * len(attempts)
        groups: dict[_Who, list[int]] = {}
        for i, (imp, _, _) in enumerate(attempts):
            groups.setdefault(self._who(imp.household_id, imp.user_id), []).append(i)
        today = self._today()
        for who, members in groups.items():
            mine = [attempts[i] for i in members]
            try:
                results = self._reserve(who, mine, today, budget_s)
            except StoreUnavailable as exc:
                if len(groups) == 1:
                    raise
                results = [exc] * len(members)
            for i, result in zip(members, results, strict=True):
                out[i] = result
        return out

    def _reserve(
        self, who: _Who, attempts: list[Attempt], today: int, budget_s: float | None
    ) -> list[int | StoreUnavailable]:
        snapshot = self._recent.pop(who, None)
        retries = [False] * len(attempts)
        block_keys = [key for _, _, key in self._block_keys(who)]
        markers = self._markers(who[0], today)
        keys = [*self.keys.parts(who[0]), *block_keys, *markers]
        for _ in range(_TRIES):
            if snapshot is None:
                read_keys, read_args = self._read_call(who)
                reply = self._call(partial(self._eval, self._read, read_keys, read_args, budget_s))
                with _readable(who):
                    snapshot = self._snapshot(who, reply)
            with _readable(who):
                results = self._decide(snapshot, attempts, retries)
            length, generation = snapshot.version
            args: list[EncodableT] = [length, generation, len(block_keys), len(markers)]
            args += [self.horizon_s + 86_400, self.ttl_s, 0, len(attempts)]
            due = 0
            for (imp, _, _), retry, result in zip(attempts, retries, results, strict=True):
                ts, ids = eventlog.impression_bytes(imp, self.competing, self.recorded)
                args += [fingerprint(imp.impression_id), ts, ids, int(retry), int(result == 1)]
                due = max(due, self._due_us(micros(imp.ts)))
            args[6] = due
            answer = self._call(partial(self._eval, self._commit, keys, args, budget_s))
            if int(answer[0]) == 1:
                if int(answer[1]):
                    self._fold_now(who)
                return list(results)
            with _readable(who):
                snapshot = self._snapshot(who, answer[1:-1])
            retries = [flag == ord("1") for flag in bytes(answer[-1])]
        raise StoreUnavailable(f"cap store: reservations kept conflicting ({_TRIES} tries)")

    def _decide(
        self, snapshot: eventlog.Snapshot, attempts: list[Attempt], retries: list[bool]
    ) -> list[int]:
        """Each attempt's answer on the snapshot, in order: an admitted one counts for the
        ones after it (appended to a copy of the log), a retry is 0 (and so is an impression
        id repeated within the attempts)."""
        current = snapshot.log
        writer: eventlog.Writer | None = None
        taken: set[str] = set()
        out = []
        for (imp, plan, checks), retry in zip(attempts, retries, strict=True):
            if retry or imp.impression_id in taken:
                out.append(0)
                continue
            if eventlog.blocked(plan, snapshot.blocks).any():
                out.append(BLOCK_REFUSAL)
                continue
            refused = refusal(plan, checks, eventlog.answers(plan, current, inclusive=True))
            if refused:
                out.append(refused)
                continue
            out.append(1)
            taken.add(imp.impression_id)
            writer = writer or eventlog.Writer(current.parts)
            eventlog.add(writer, imp, self.competing, self.recorded)
            current = eventlog.Log(writer.parts())
        return out

    def block(self, feedback: list[Feedback]) -> int:
        """See :class:`CapStore`. Each block stores its end (event time); a later end wins; it
        raises its household's generation (a reservation checked before it is checked
        again). One pipelined round trip (per cluster node)."""
        calls: list[_Call] = []
        for w in block_writes(self.blocks, feedback):
            tag = self.keys.tag(w.event.household_id, w.event.user_id)
            key = self.keys.blocks(tag, w.scope, w.scope_id, w.target)
            generation = self.keys.parts(tag)[4]
            calls.append(([key, generation], [w.target_id, w.until_us, w.ttl_s, self.ttl_s]))
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
