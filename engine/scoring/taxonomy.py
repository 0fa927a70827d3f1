"""A category taxonomy (the IAB Ad Product Taxonomy, or any in its TSV layout), so that a
protection may name a whole branch: ``"1002/*"`` is category ``1002`` and every category under
it, ``"Alcohol/*"`` the same by the branch root's name.

The file is the IAB Tech Lab's tab-separated export: a header row naming at least the columns
``Unique ID`` and ``Parent`` (``Parent ID`` in some releases) and, for names, ``Name``; one row
per category, the parent empty (or the category itself, as in some releases) for a top-level
one. Columns are found by their header, so the tier columns and extensions of later releases
are ignored.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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

    def ancestry(self) -> dict[str, list[str]]:
        """Per category id, itself and every category above it (nearest first)."""
        out = {}
        for node in self.parent:
            chain, up, seen = [node], self.parent[node], {node}
            while up is not None and up not in seen:  # a cycle in a broken file ends here
                chain.append(up)
                seen.add(up)
                up = self.parent.get(up)
            out[node] = chain
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
    children: dict[str, list[str]] = defaultdict(list)
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
        if up is not None:
            children[up].append(node)
    unknown = sorted({p for p in parents.values() if p is not None and p not in parents})
    if unknown:
        raise ValueError(f"{path}: parents {unknown[:5]} are not categories of the file")
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
