"""The one errors module of admatch.

Every error admatch raises on purpose is an :class:`AdmatchError`. Each class knows the gRPC
status it maps to (by name, so this module imports nothing and any layer, including the feature
core, may raise these errors). Client faults (bad input, bad files, bad config) are kept apart
from server faults: only :class:`InvalidArgument` and its subclasses name the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SHOWN_CHARS = 40  # how much of a value an error message quotes


def shown(value: object, width: int = SHOWN_CHARS) -> str:
    """A value as an error message quotes it: its ``repr``, cut to ``width`` characters (a
    3 MiB id is not sent back whole)."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


def message_rule(message: str) -> str:
    """A message without its values and positions (quoted values, numbers and indices become
    ``…``), so that messages of one kind count together."""
    return re.sub(r"'[^']*('|\.\.\.)|\[\d+\]|-?\d[\d,.]*(e[-+]?\d+)?", "…", message)


class AdmatchError(Exception):
    """Base of all admatch errors. Unknown subclasses are server faults (INTERNAL)."""

    status: str = "INTERNAL"

    def violations(self) -> list[tuple[str, str]]:
        """``(field, problem)`` pairs of a client fault, for machine-readable details (a
        google.rpc.BadRequest); none for other errors."""
        return []


class InvalidArgument(AdmatchError):
    """Bad input from a caller: a request, a log file, a mapping or a config.

    Attributes:
        field: the offending field, column or key (dotted path), e.g. ``"candidates[3].bid"``.
        problem: what is wrong with it, in words a user can act on.
    """

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")

    def violations(self) -> list[tuple[str, str]]:
        """See :meth:`AdmatchError.violations`: this error's field and problem."""
        return [(self.field, self.problem)]


class LogSchemaError(InvalidArgument):
    """A log does not match the ad-opportunity log schema; ``field`` is the column."""


class MappingError(InvalidArgument):
    """An import mapping file is invalid or does not fit its input; ``field`` is the key."""


class ConfigError(InvalidArgument):
    """A config file is invalid. Carries every problem found, not just the first.

    Attributes:
        problems: ``(key, problem)`` pairs, in the order they were found.
    """

    def __init__(self, problems: Iterable[tuple[str, str]], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        first_key, _ = self.problems[0] if self.problems else ("", "")
        lines = "\n".join(f"  {key}: {problem}" for key, problem in self.problems)
        InvalidArgument.__init__(self, first_key, f"{len(self.problems)} problem(s)")
        self.args = (f"invalid {source}:\n{lines}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def violations(self) -> list[tuple[str, str]]:
        """Every problem found."""
        return list(self.problems)


class NotReady(AdmatchError):
    """The service cannot answer yet (no model loaded, store not connected)."""

    status = "UNAVAILABLE"


class Overloaded(AdmatchError):
    """Too much work in flight; the caller should back off and retry."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(AdmatchError):
    """The request's time budget ran out; no further work (and no cap reservation) is done."""

    status = "DEADLINE_EXCEEDED"


class ModelError(AdmatchError):
    """A model directory is missing, corrupt, or does not fit the running feature core.

    The server refuses such a model and keeps serving the one it has.
    """

    status = "FAILED_PRECONDITION"

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class Unauthenticated(AdmatchError):
    """No credentials where an operator RPC needs them."""

    status = "UNAUTHENTICATED"


class PermissionDenied(AdmatchError):
    """Credentials given but not accepted (or operator RPCs disabled)."""

    status = "PERMISSION_DENIED"
