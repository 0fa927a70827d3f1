"""The log files' names, standard library only (the converter's entry reads them before it
imports anything heavy): ``<kind>-<UTC start>-<host>-<pid>-<n>.<extension>[.partial]``.
"""

from __future__ import annotations

import os

PARTIAL = ".partial"  # a file being written; finalised by renaming it without this
SPOOL = "spool"  # the decision spool's extension
DECISIONS = "decisions"


def writer_of(name: str) -> tuple[str, int] | None:
    """The host and pid of a decision file's writer (``None``: not such a file)."""
    stem = name.removesuffix(PARTIAL).rsplit(".", 1)[0]
    head, _, rest = stem.partition("-")
    pieces = rest.split("-")
    if head != DECISIONS or len(pieces) < 4 or not pieces[-2].isdigit():
        return None
    return "-".join(pieces[1:-2]), int(pieces[-2])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def takes(name: str, host: str, worker: int) -> bool:
    """Whether the converter of ``worker`` on ``host`` converts the spool file ``name`` now:
    its worker's finalised files, and any file of a worker that died on this host (its open
    one too: the records it wrote are whole). ``worker`` 0 (the join's pass) also takes every
    finalised file."""
    parts = writer_of(name)
    final = name.endswith(f".{SPOOL}")
    if parts is None or not (final or name.endswith(f".{SPOOL}{PARTIAL}")):
        return False
    if final and not worker:
        return True
    if parts[0] != host:
        return False
    if parts[1] == worker:
        return final
    return not alive(parts[1])
