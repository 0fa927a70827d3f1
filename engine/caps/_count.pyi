"""Type stub of the compiled inner loop of the cap reads (``_count.pyx``)."""

import numpy as np

def count(
    flat: np.ndarray,
    group_base: np.ndarray,
    program: np.ndarray,
    sizes: np.ndarray,
    names: np.ndarray,
    t0: int,
    inclusive: bool,
    latest_from: int,
    events: np.ndarray,
    tuples: np.ndarray,
    fps: np.ndarray,
    day_head: np.ndarray,
    day_body: np.ndarray,
    day_base: int,
) -> None: ...
def day_records(
    day_body: np.ndarray, start: int, end: int, day_base: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def place(
    out: np.ndarray,
    base_row: np.ndarray,
    flat: np.ndarray,
    offsets: np.ndarray,
    safe_rows: np.ndarray,
    last_row: np.ndarray,
    gather: np.ndarray,
    since: np.ndarray,
    guards: np.ndarray,
    t_us: int,
    nulls: bool,
) -> None: ...
