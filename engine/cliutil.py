"""What every ``admatch`` command shares: the consoles, the error exit, result tables."""

from __future__ import annotations

from typing import NoReturn

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from engine.errors import AdmatchError

console = Console(width=None if Console().is_terminal else 140)
err_console = Console(stderr=True, soft_wrap=True)  # errors are never wrapped


def fail(exc: AdmatchError) -> NoReturn:
    """Print the error (naming the field or file) and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(code=2)


def table(frame: pl.DataFrame, title: str) -> Table:
    """A frame as a rich table (numbers right-aligned, floats to 4 significant digits)."""
    out = Table(title=title, title_justify="left")
    for name in frame.columns:
        out.add_column(name, justify="right" if frame[name].dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        out.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    return out
