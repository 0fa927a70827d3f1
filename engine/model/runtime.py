"""Model runtimes: LightGBM's own predict, or the same trees compiled with lleaves.

A runtime turns a C-ordered float64 feature matrix into probabilities, in one call per batch.
Runtimes are registered in ``RUNTIMES``; ``load_predictor`` picks one by name, and ``"auto"``
prefers the compiled trees when a compiled file exists for this exact model and falls back to
LightGBM otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import lightgbm as lgb
import numpy as np

from engine.errors import ModelError

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """Probability of the positive class for each row of a feature matrix."""

    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities, shape (rows,), for a C-ordered float64 matrix (NaN = missing)."""
        ...


class LightGBMPredictor:
    """LightGBM's own predict, single-threaded (servers scale by processes)."""

    name = "lightgbm"

    def __init__(self, model_file: Path) -> None:
        try:
            self.booster = lgb.Booster(model_file=str(model_file))
        except (lgb.basic.LightGBMError, OSError) as exc:
            raise ModelError(str(model_file), f"not a readable LightGBM model: {exc}") from exc

    def predict(self, x: np.ndarray) -> np.ndarray:
        """See :class:`Predictor`."""
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)


class LleavesPredictor:
    """The trees compiled to machine code by lleaves (LLVM)."""

    name = "lleaves"

    def __init__(self, model_file: Path, compiled: Path) -> None:
        import lleaves  # optional: only where the compiler is installed

        if not compiled.exists():
            raise ModelError(str(compiled), "compiled model file missing")
        self.model = lleaves.Model(model_file=str(model_file))
        self.model.compile(cache=str(compiled))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """See :class:`Predictor`."""
        return np.asarray(self.model.predict(x, n_jobs=1), dtype=np.float64)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiler_available() -> bool:
    """Whether lleaves (and a working llvmlite) can be imported here."""
    try:
        import lleaves  # noqa: F401
    except Exception:  # any import failure means: no compiler here
        return False
    return True


def compile_model(model_file: Path, compiled: Path) -> Path:
    """Compile a LightGBM model file with lleaves into ``compiled`` (an ELF cache file).

    Takes seconds for small models and minutes for large ones; done at training time.
    """
    import lleaves

    compiled.parent.mkdir(parents=True, exist_ok=True)
    compiled.unlink(missing_ok=True)
    lleaves.Model(model_file=str(model_file)).compile(cache=str(compiled))
    return compiled


RUNTIMES: dict[str, Callable[[Path, Path], Predictor]] = {
    "lightgbm": lambda model_file, _compiled: LightGBMPredictor(model_file),
    "lleaves": LleavesPredictor,
}


def load_predictor(runtime: str, model_file: Path, compiled: Path | None) -> Predictor:
    """Load a predictor by runtime name (``auto``, ``lleaves`` or ``lightgbm``).

    Raises:
        ModelError: an unknown runtime, a missing compiled file for ``lleaves``, or an
            unreadable model.
    """
    if runtime == "auto":
        if compiled is not None and compiled.exists() and compiler_available():
            try:
                return LleavesPredictor(model_file, compiled)
            except Exception as exc:  # a stale or foreign compiled file: use LightGBM
                log.warning("compiled model %s unusable (%s); using LightGBM", compiled, exc)
        return LightGBMPredictor(model_file)
    if runtime not in RUNTIMES:
        raise ModelError(
            "runtime", f"unknown runtime {runtime!r}; one of auto, {', '.join(RUNTIMES)}"
        )
    if runtime == "lleaves" and compiled is None:
        raise ModelError("runtime", "lleaves needs a compiled model (train with --compile)")
    return RUNTIMES[runtime](model_file, compiled or model_file)
