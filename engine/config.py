"""The one validated config tree of admatch, read from TOML.

``load_config(path)`` reads a file (``None``: the shipped ``default_config.toml``), validates all
of it with pydantic (unknown keys, wrong types, negative weights, missing cost components, tables
that do not cover every slot and format) and raises one :class:`ConfigError` listing every
problem with its dotted key. ``docs/config.md`` documents each key.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.caps.rules import CapsConfig, parse_duration
from engine.errors import ConfigError
from features.params import Priors
from features.schema import FORMATS, SLOT_TOUCHPOINT, SLOTS, TOUCHPOINTS

COST_COMPONENTS = (
    "intrusiveness",
    "length",
    "negative_feedback",
    "relevance_mismatch",
    "fatigue",
    "quiet_hours",
    "family_scene",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CostWeights(_Strict):
    """Weight of each experience-cost component (unitless, >= 0). All are required."""

    intrusiveness: float = Field(ge=0)
    length: float = Field(ge=0)
    negative_feedback: float = Field(ge=0)
    relevance_mismatch: float = Field(ge=0)
    fatigue: float = Field(ge=0)
    quiet_hours: float = Field(ge=0)
    family_scene: float = Field(ge=0)

    def vector(self) -> list[float]:
        """Weights in ``COST_COMPONENTS`` order."""
        return [getattr(self, c) for c in COST_COMPONENTS]


class Scoring(_Strict):
    """How utility is computed: ``expected value - cost_to_money x experience cost``."""

    cost_to_money: float = Field(ge=0, description="lambda: money per unit of experience cost")
    reserve: float = Field(description="minimum utility (money per impression) to show an ad")
    relevance_reference: float = Field(gt=0, le=1)
    conversion_prior: float = Field(gt=0, le=1)
    weights: CostWeights
    quiet_hours: dict[str, tuple[int, int]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _hours(self) -> Scoring:
        for tp, (start, end) in self.quiet_hours.items():
            if tp not in TOUCHPOINTS:
                raise ValueError(f"quiet_hours: unknown touchpoint {tp!r}")
            if not (0 <= start <= 23 and 0 <= end <= 23):
                raise ValueError(f"quiet_hours.{tp}: hours must be 0..23")
        return self


class SlotRule(_Strict):
    """What a slot accepts; ``max_ads`` > 1 makes it a pod."""

    formats: list[str] = Field(min_length=1)
    max_duration_s: float = Field(gt=0)
    max_ads: int = Field(1, ge=1, le=10)
    max_total_duration_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _formats(self) -> SlotRule:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown formats {unknown}")
        return self


class StoreConfig(_Strict):
    """Where exposure counts live. An empty URL starts an embedded Redis."""

    url: str = ""
    cluster: bool = False
    prefix: str = Field("admatch", min_length=1)
    deadline_ms: float = Field(50, gt=0)
    fail_mode: Literal["closed", "open"] = "closed"
    retention: str = "7d"
    max_ahead: str = "5m"

    @model_validator(mode="after")
    def _url(self) -> StoreConfig:
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://", "memory://")):
            raise ValueError("url must start with redis://, rediss://, unix:// or memory://")
        days = parse_duration(self.retention) / 86_400
        if not 1 <= days <= 31:
            raise ValueError("retention must be between 1d and 31d")
        if parse_duration(self.max_ahead) > 86_400:
            raise ValueError("max_ahead must be at most 1d")
        return self


class ServerConfig(_Strict):
    """How ``admatch serve`` listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    threads: int = Field(
        64, ge=1, le=256, description="request threads per process; a stream holds one"
    )
    max_candidates: int = Field(1000, ge=1, description="candidates per request")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="per message")
    max_concurrent: int = Field(
        64, ge=1, description="requests in flight; more are refused with RESOURCE_EXHAUSTED"
    )
    default_deadline_ms: float = Field(
        1000.0, gt=0, description="time budget of a request that comes without a deadline"
    )
    max_deadline_ms: float = Field(
        10000.0, gt=0, description="longer client deadlines are cut to this"
    )
    batch_max: int = Field(
        32, ge=1, le=1024, description="requests decided in one pass at most; 1: no batching"
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="a pass waits this long for more requests; 0: takes those queued",
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="how often to look for a changed model or config; 0: never"
    )
    tls_cert_file: str = Field("", description="server certificate (PEM); with the key: TLS")
    tls_key_file: str = Field("", description="server private key (PEM)")
    tls_client_ca_file: str = Field("", description="CA of client certificates: mutual TLS")
    metrics_host: str = Field("127.0.0.1", description="Prometheus /metrics binds here")
    metrics_port: int = Field(9464, ge=0, le=65535, description="0: no metrics endpoint")
    operator_token: str = Field(
        "", description="bearer token of operator RPCs; ADMATCH_OPERATOR_TOKEN overrides it"
    )


UserCost = Literal["negative", "ads_per_user_day", "ads_per_household_day"]
TUNABLE = (*(f"weights.{c}" for c in COST_COMPONENTS), "cost_to_money", "reserve")


def _default_ranges() -> dict[str, tuple[float, float]]:
    ranges = {f"weights.{c}": (0.0, 4.0) for c in COST_COMPONENTS}
    return {**ranges, "cost_to_money": (0.0, 0.05), "reserve": (0.0, 0.02)}


class TuningConstraints(_Strict):
    """What a recommended weight set must satisfy (by its estimates)."""

    max_negative_rate: float | None = Field(
        None, ge=0, description="negative feedback per request at most this"
    )
    negative_vs_current: float | None = Field(
        1.0, ge=0, description="else: at most this multiple of the current weights' rate"
    )
    max_ads_per_household_day: dict[str, int] = Field(
        default_factory=dict, description="per touchpoint: no household-day above this"
    )
    min_revenue_pct: float | None = Field(
        None, ge=0, description="revenue at least this percent of the current weights'"
    )

    @model_validator(mode="after")
    def _touchpoints(self) -> TuningConstraints:
        unknown = [t for t in self.max_ads_per_household_day if t not in TOUCHPOINTS]
        if unknown:
            raise ValueError(f"max_ads_per_household_day: unknown touchpoints {unknown}")
        return self


class TuningConfig(_Strict):
    """``admatch tune``: search ranges, the estimator trials are judged by, constraints."""

    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=_default_ranges,
        description="parameter -> [low, high]; parameters not listed keep their config value",
    )
    estimator: Literal["dr", "snips"] = "dr"
    revenue: Literal["smoothed", "realised"] = Field(
        "smoothed",
        description="trials compared by revenue with CPA conversions as engagement x the log's "
        "conversion rate given engagement (smoothed), or by realised conversions",
    )
    objectives: list[UserCost] = Field(
        default_factory=lambda: list[UserCost](["negative"]),
        min_length=1,
        description="user costs minimised beside revenue (more objectives, sparser frontier)",
    )
    sampler: Literal["tpe", "nsga2"] = "tpe"
    min_matched_events: int = Field(
        100, ge=1, description="trials resting on fewer matched logged events are flagged"
    )
    constraints: TuningConstraints = Field(default_factory=TuningConstraints)

    @model_validator(mode="after")
    def _ranges(self) -> TuningConfig:
        for name, (low, high) in self.ranges.items():
            if name not in TUNABLE:
                raise ValueError(f"ranges: unknown parameter {name!r} (tunable: {TUNABLE})")
            if not 0 <= low <= high:
                raise ValueError(f"ranges.{name}: need 0 <= low <= high, got [{low}, {high}]")
        return self


def _tls_problems(server: ServerConfig) -> list[str]:
    if bool(server.tls_cert_file) != bool(server.tls_key_file):
        return ["tls_cert_file and tls_key_file go together"]
    if server.tls_client_ca_file and not server.tls_cert_file:
        return ["tls_client_ca_file needs tls_cert_file and tls_key_file"]
    files = (server.tls_cert_file, server.tls_key_file, server.tls_client_ca_file)
    return [f"{f}: file not found" for f in files if f and not Path(f).is_file()]


class AdmatchConfig(_Strict):
    """The whole configuration."""

    version: str = Field(min_length=1, description="reported with every decision")
    scoring: Scoring
    intrusiveness: dict[str, dict[str, float]]
    slots: dict[str, SlotRule]
    caps: CapsConfig = Field(default_factory=CapsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)

    @model_validator(mode="after")
    def _tls(self) -> AdmatchConfig:
        problems = _tls_problems(self.server)
        if problems:
            raise ValueError("server TLS: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _tables(self) -> AdmatchConfig:
        missing = [s for s in SLOTS if s not in self.slots]
        unknown = [s for s in self.slots if s not in SLOT_TOUCHPOINT]
        if missing or unknown:
            raise ValueError(f"slots: missing {missing}, unknown {unknown}")
        return self

    def priors(self) -> Priors:
        """The intrusiveness table and conversion prior as feature-core priors (validated)."""
        doc = {
            "intrusiveness": self.intrusiveness,
            "conversion": {"prior": self.scoring.conversion_prior},
        }
        return Priors.from_dict(doc, source="config")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key missing"
        out.append((key, msg))
    return out


def parse_config(doc: dict[str, Any], source: str = "config") -> AdmatchConfig:
    """Validate a parsed config document.

    Raises:
        ConfigError: listing every problem with its dotted key.
    """
    try:
        config = AdmatchConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source=source) from exc
    config.priors()  # the intrusiveness table must cover every slot and format, within [0, 1]
    return config


def load_config(path: Path | None = None) -> AdmatchConfig:
    """Read and validate a TOML config file; ``None`` reads the shipped default."""
    if path is None:
        text = resources.files("engine").joinpath("default_config.toml").read_text()
        source = "default_config.toml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([("config", f"cannot read {path}: {exc.strerror}")]) from exc
        source = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("config", f"not valid TOML: {exc}")], source=source) from exc
    return parse_config(doc, source)
