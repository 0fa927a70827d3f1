"""Loading a model directory: checked against the running feature core, refused when corrupt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import ConfigError, InvalidArgument, ModelError
from engine.model.calibrate import Calibration
from engine.model.runtime import Predictor, file_sha256, load_predictor
from engine.model.train import FORMAT_VERSION, feature_list
from features import EngagementStats, FeatureCore, FeatureParams, Priors

# What scoring and tuning assume of a target the model directory has no model of.
ASSUMED = {
    "negative": "predicted negative feedback counts as 0 in the experience cost",
    "converted": "CPA bids take scoring.conversion_prior as P(convert | engage)",
}
_NAMES = {"negative": "negative-feedback", "converted": "conversion"}


class Predictions(NamedTuple):
    """The models' probabilities for the rows of one feature matrix (``None``: no model)."""

    engaged: np.ndarray
    negative: np.ndarray | None
    converted: np.ndarray | None  # P(converted | engaged)


class Calibrated:
    """A predictor whose probabilities go through the calibration its training fitted."""

    def __init__(self, inner: Predictor, calibration: Calibration) -> None:
        self.inner, self.calibration = inner, calibration
        self.name = inner.name

    def predict(self, x: np.ndarray) -> np.ndarray:
        """See :class:`~engine.model.runtime.Predictor`."""
        return self.calibration(self.inner.predict(x))


@dataclass(frozen=True)
class ModelBundle:
    """The models, the feature core they were trained with, and their metadata.

    Attributes:
        version: ``metadata.json``'s model_version (hash of the boosters and statistics).
        core: a feature core with the model's fitted statistics and priors.
        engaged: predictor of P(engaged).
        negative: predictor of P(negative), or ``None`` if the log had no negative outcomes.
        metadata: the parsed ``metadata.json``.
        converted: predictor of P(converted | engaged), or ``None`` (the log had no
            conversions): CPA bids then use the configured prior.
    """

    directory: Path
    version: str
    core: FeatureCore
    engaged: Predictor
    negative: Predictor | None
    metadata: dict[str, Any]
    converted: Predictor | None = None

    @property
    def assumptions(self) -> list[str]:
        """What decisions assume for lack of a model: one line per missing target."""
        out = []
        for target in ASSUMED:
            if getattr(self, target) is None:
                why = self.metadata.get("not_trained", {}).get(target, "not in the model directory")
                out.append(f"no {_NAMES[target]} model ({why}): {ASSUMED[target]}")
        return out

    @property
    def runtime(self) -> str:
        """Name of the runtime serving the engagement model (``lleaves`` or ``lightgbm``)."""
        return self.engaged.name

    def predict(self, x: np.ndarray, convert: np.ndarray | None = None) -> Predictions:
        """Every model's probabilities for a feature matrix, one call per model. ``convert``
        (a row mask): only these rows need P(convert | engage) (the CPA ones); the others get
        NaN, and the conversion model is not called when none does."""
        neg = self.negative.predict(x) if self.negative is not None else None
        conv = None
        if self.converted is not None:
            if convert is None:
                conv = self.converted.predict(x)
            else:
                conv = np.full(len(x), np.nan)
                if convert.any():
                    conv[convert] = self.converted.predict(np.ascontiguousarray(x[convert]))
        return Predictions(self.engaged.predict(x), neg, conv)

    @classmethod
    def load(cls, directory: Path, runtime: str = "auto") -> ModelBundle:
        """Load and check a model directory.

        Raises:
            ModelError: a missing or unreadable file, a model file that does not match its
                recorded hash, or a feature list that differs from the running feature core.
        """
        meta = _metadata(directory)
        _check_features(meta)
        try:
            stats = EngagementStats.load(directory)
            priors = Priors.from_dict(_read_json(directory / "priors.json"), "priors.json")
        except (InvalidArgument, ConfigError) as exc:
            raise ModelError(str(directory), str(exc)) from exc
        predictors: dict[str, Predictor] = {}
        for target, entry in meta["targets"].items():
            model_file = directory / entry["model"]
            if not model_file.exists():
                raise ModelError(str(model_file), "model file missing")
            if file_sha256(model_file) != entry["sha256"]:
                raise ModelError(str(model_file), "model file changed since training (hash)")
            compiled = directory / entry["compiled"] if entry.get("compiled") else None
            predictors[target] = load_predictor(runtime, model_file, compiled)
            if entry.get("calibration") is not None:
                try:
                    cal = Calibration.from_json(entry["calibration"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise ModelError(
                        "metadata.json", f"targets.{target}.calibration: {exc}"
                    ) from exc
                predictors[target] = Calibrated(predictors[target], cal)
        if "engaged" not in predictors:
            raise ModelError(str(directory), "no engagement model")
        core = FeatureCore(FeatureParams(stats, priors))
        return cls(
            directory,
            meta["model_version"],
            core,
            predictors["engaged"],
            predictors.get("negative"),
            meta,
            predictors.get("converted"),
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(str(path), "missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(str(path), f"unreadable: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelError(str(path), "not a JSON object")
    return doc


def _metadata(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ModelError(str(directory), "not a model directory")
    meta = _read_json(directory / "metadata.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            "metadata.json",
            f"format_version {meta.get('format_version')!r}, this admatch reads {FORMAT_VERSION}",
        )
    for key in ("model_version", "features", "targets"):
        if key not in meta:
            raise ModelError("metadata.json", f"missing key {key!r}")
    return meta


def _check_features(meta: dict[str, Any]) -> None:
    running = feature_list()
    trained = meta["features"]
    if trained == running:
        return
    names_t = [f.get("name") for f in trained]
    names_r = [f["name"] for f in running]
    missing = [n for n in names_t if n not in names_r]
    extra = [n for n in names_r if n not in names_t]
    if missing or extra:
        detail = f"model has features the core lacks: {missing}; core has new: {extra}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(trained, running, strict=True)) if a != b)
        detail = f"feature {first} is {trained[first]} in the model, {running[first]} in the core"
    raise ModelError("metadata.json", f"feature list does not match the running core: {detail}")
