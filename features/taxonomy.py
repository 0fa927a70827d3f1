"""A category taxonomy (the IAB Ad Product Taxonomy, or any in its TSV layout), so that a
protection may name a whole branch: ``"1002/*"`` is category ``1002`` and every category under
it, ``"Alcohol/*"`` the same by the branch root's name; and so that a user's interest tag
(an id or a name) matches the ads of its category and of every category under it.

The file is the IAB Tech Lab's tab-separated export: a header row naming at least the columns
``Unique ID`` and ``Parent`` (``Parent ID`` in some releases) and, for names, ``Name``; one row
per category, the parent empty (or the category itself, as in some releases) for a top-level
one. Columns are found by their header, so the tier columns and extensions of later releases
are ignored.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BRANCH = "/*"


@dataclass(frozen=True)
class Taxonomy:
    """Categories by id: their parent and name, and their children."""

    parent: dict[str, str | None]
    name: dict[str, str]
    children: dict[str, tuple[str, ...]]

    def root(self, entry: str) -> str:
        """The id a branch entry (without ``/*``) names: an id, or a unique name (any case).

        Raises:
            ValueError: no such id or name, or a name that several categories share.
        """
        if entry in self.parent:
            return entry
        found = [i for i, n in self.name.items() if n.casefold() == entry.casefold()]
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(f"{entry!r} names several categories ({', '.join(found)}): use an id")
        raise ValueError(f"{entry!r} is neither an id nor a name of the taxonomy")

    def branch(self, entry: str) -> list[str]:
        """The id of ``entry`` and of every category under it."""
        out: dict[str, None] = {}
        todo = [self.root(entry)]
        while todo:
            node = todo.pop()
            if node not in out:  # a cycle in a broken file ends here
                out[node] = None
                todo.extend(self.children.get(node, ()))
        return list(out)

    def lookup(self) -> dict[str, str]:
        """The id each spelling stands for: an id, a name, in lower case (names two categories
        share are left out: they say nothing certain)."""
        out = {n.lower(): i for i, n in self.name.items() if n}
        shared = Counter(n.lower() for n in self.name.values() if n)
        out = {k: v for k, v in out.items() if shared[k] == 1}
        return out | {i.lower(): i for i in self.parent}

    def preorder(self) -> tuple[dict[str, int], dict[str, int]]:
        """Depth-first numbers: per id, its own and the last of its branch, so that a category
        is in the branch of ``a`` when its number is in ``a``'s range."""
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        roots = [n for n, up in self.parent.items() if up is None]
        todo: list[tuple[str, bool]] = [(r, False) for r in reversed(roots)]
        while todo:
            node, done = todo.pop()
            if done:
                last[node] = len(first) - 1
            elif node not in first:  # a cycle in a broken file ends here
                first[node] = len(first)
                todo.append((node, True))
                todo.extend((c, False) for c in reversed(self.children.get(node, ())))
        for node in self.parent:  # in a cycle with no root: a branch of its own
            if node not in first:
                first[node] = last[node] = len(first)
        return first, last

    def to_dict(self) -> dict[str, Any]:
        """Parents and names by id (what :meth:`from_dict` reads), for a model directory."""
        return {"parent": self.parent, "name": self.name}

    @classmethod
    def from_dict(cls, doc: Any) -> Taxonomy:
        """A taxonomy written by :meth:`to_dict`.

        Raises:
            ValueError: not that shape, or a parent that is not a category.
        """
        parent, name = (doc.get(k) if isinstance(doc, dict) else None for k in ("parent", "name"))
        if not isinstance(parent, dict) or not isinstance(name, dict):
            raise ValueError("expected {'parent': {id: parent id or null}, 'name': {id: name}}")
        if not all(isinstance(v, str | None) for v in parent.values()):
            raise ValueError("a parent that is neither an id nor null")
        return _build(parent, {str(k): str(v) for k, v in name.items()}, "the taxonomy")


@dataclass(frozen=True)
class Branches:
    """A taxonomy as depth-first numbers: per spelling of a category (its id, or a name that
    only it has; lower case), its own number and the last of its branch. A category is in the
    branch of ``a`` (``a`` itself or under it) when its number is in ``a``'s range: one
    comparison whatever the depth, in numpy over many rows at once."""

    first: dict[str, int]
    last: dict[str, int]

    @classmethod
    def of(cls, taxonomy: Taxonomy) -> Branches:
        """The numbers of every spelling the taxonomy knows."""
        first, last = taxonomy.preorder()
        lookup = taxonomy.lookup()
        return cls(
            {s: first[i] for s, i in lookup.items()}, {s: last[i] for s, i in lookup.items()}
        )

    def code(self, *arrays: pa.Array) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """The strings of ``arrays`` as codes into one dictionary (-1 for null), and per code
        its number and branch end (-1: a value the taxonomy does not know; index -1 is null's).
        Each distinct value is looked up once: a hash lookup in polars (``replace``) builds its
        table on every call, ~0.5 ms for 1,500 categories, whatever the rows."""
        coded = pc.dictionary_encode(pa.concat_arrays([a.cast(pa.large_string()) for a in arrays]))
        codes = _filled(coded.indices, -1)
        spelled = [str(v).lower() for v in coded.dictionary.to_pylist()]
        first = np.array([self.first.get(v, -1) for v in spelled] + [-1], dtype=np.int64)
        last = np.array([self.last.get(v, -1) for v in spelled] + [-1], dtype=np.int64)
        bounds = np.cumsum([0, *(len(a) for a in arrays)])
        return [codes[i:j] for i, j in zip(bounds[:-1], bounds[1:], strict=True)], first, last

    def covered(self, values: pa.Array, entries: pa.Array) -> np.ndarray:
        """Per row, whether one of its ``values`` (a list column) is in the branch of one of its
        ``entries`` (a list column); a value or an entry the taxonomy does not know matches
        only itself, exactly."""
        n = len(values)
        vlen, elen = list_lengths(values), list_lengths(entries)
        (v, e), first, last = self.code(pc.list_flatten(values), pc.list_flatten(entries))
        if not len(v) or not len(e):
            return np.zeros(n, dtype=bool)
        # every (entry, value of the entry's row) pair
        erow = np.repeat(np.arange(n), elen)
        per = vlen[erow]
        pair_entry = np.repeat(np.arange(len(e)), per)
        within = np.arange(len(pair_entry)) - np.repeat(np.cumsum(per) - per, per)
        pair_value = (np.cumsum(vlen) - vlen)[erow[pair_entry]] + within
        ev, vv = e[pair_entry], v[pair_value]
        number = first[vv]
        inside = (number >= first[ev]) & (number <= last[ev]) & (number >= 0)
        hit = np.where(first[ev] >= 0, inside, (ev == vv) & (ev >= 0))
        out = np.zeros(n, dtype=bool)
        out[erow[pair_entry[hit]]] = True
        return out


def list_lengths(lists: pa.Array) -> np.ndarray:
    """A list column's entry lengths as int64 numpy, 0 for a null entry."""
    return _filled(pc.list_value_length(lists), 0)


def _filled(values: pa.Array, null: int) -> np.ndarray:
    """Integers as int64 numpy, ``null`` where missing."""
    if values.null_count:
        values = pc.fill_null(values, null)
    out: np.ndarray = values.to_numpy().astype(np.int64, copy=False)
    return out


def _column(header: list[str], *names: str) -> int | None:
    folded = [h.strip().casefold() for h in header]
    return next((folded.index(n) for n in names if n in folded), None)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Taxonomy:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path} is empty")
    header = rows[0]
    uid, parent = _column(header, "unique id"), _column(header, "parent", "parent id")
    name = _column(header, "name")
    if uid is None or parent is None:
        raise ValueError(
            f"{path}: the header names no 'Unique ID' and 'Parent' columns (found {header})"
        )
    parents: dict[str, str | None] = {}
    names: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(uid, parent):
            raise ValueError(f"{path}:{line}: {len(row)} columns, the header has {len(header)}")
        node, up = row[uid].strip(), row[parent].strip() or None
        if up == node:  # some releases give a top-level category itself as its parent
            up = None
        if not node:
            raise ValueError(f"{path}:{line}: no Unique ID")
        if not node.isprintable():
            raise ValueError(f"{path}:{line}: Unique ID {node!r} holds a control character")
        if node in parents:
            raise ValueError(f"{path}:{line}: Unique ID {node!r} appears twice")
        parents[node] = up
        if name is not None and len(row) > name:
            names[node] = row[name].strip()
    return _build(parents, names, path)


def _build(parents: dict[str, str | None], names: dict[str, str], source: str) -> Taxonomy:
    unknown = sorted({p for p in parents.values() if p is not None and p not in parents})
    if unknown:
        raise ValueError(f"{source}: parents {unknown[:5]} are not categories of the file")
    children: dict[str, list[str]] = defaultdict(list)
    for node, up in parents.items():
        if up is not None:
            children[up].append(node)
    return Taxonomy(parents, names, {k: tuple(v) for k, v in children.items()})


def load_taxonomy(path: str | Path) -> Taxonomy:
    """The taxonomy in ``path`` (read again only when the file changes).

    Raises:
        ValueError: it cannot be read, or is not in the layout above (naming the line).
    """
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    return _load(str(path), stat.st_mtime_ns)


def expand(entries: list[str], taxonomy: Taxonomy | None) -> list[str]:
    """Category entries with every branch (``ID/*`` or ``Name/*``) replaced by its ids.

    Raises:
        ValueError: a branch without a taxonomy, or one the taxonomy does not know.
    """
    out: list[str] = []
    for entry in entries:
        if not entry.endswith(BRANCH):
            out.append(entry)
        elif taxonomy is None:
            raise ValueError(f"{entry!r} names a branch: set protections.taxonomy")
        else:
            out += taxonomy.branch(entry[: -len(BRANCH)])
    return list(dict.fromkeys(out))
