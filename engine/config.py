"""The one validated config tree of admatch, read from TOML.

``load_config(path)`` reads a file (``None``: the shipped ``default_config.toml``), validates all
of it with pydantic (unknown keys, wrong types, negative weights, missing cost components, tables
that do not cover every slot and format) and raises one :class:`ConfigError` listing every
problem with its dotted key. ``docs/config.md`` documents each key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.caps.rules import CapsConfig, parse_duration
from engine.errors import ConfigError
from features.params import Priors
from features.schema import (
    ASSISTANT_STATES,
    CREATIVE_ATTRIBUTES,
    FORMATS,
    SCENES,
    SLOT_TOUCHPOINT,
    SLOTS,
    TOUCHPOINTS,
)
from features.taxonomy import Branches, Taxonomy, expand, load_taxonomy

COST_COMPONENTS = (
    "intrusiveness",
    "length",
    "negative_feedback",
    "relevance_mismatch",
    "fatigue",
    "quiet_hours",
    "family_scene",
)


MAX_POD_ADS = 10  # ads in one pod at most (a slot's max_ads, a request's pod override)


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


class Protections(_Strict):
    """Who is protected from which ads, whatever the bid, the tier or the weights
    (docs/scoring.md, "What the user is protected from")."""

    restricted_categories: list[str] = Field(
        default_factory=lambda: ["alcohol", "gambling", "tobacco", "dating"],
        description="ad categories never shown to a minor or where a child may be present",
    )
    shared_screens: list[str] = Field(
        default_factory=lambda: ["ott", "iot"],
        description="touchpoints whose screen a household shares: whoever is in front of it "
        "may not be the request's user",
    )
    blocked_categories: dict[str, list[str]] = Field(
        default_factory=dict,
        description="categories never shown on a touchpoint, slot or scene (the key names one)",
    )
    blocked_attributes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="OpenRTB creative attributes (1-17) never shown on a touchpoint, slot or "
        "scene (the key names one)",
    )
    unknown_audience_on_shared_screens: bool = Field(
        True,
        description="refuse restricted categories on a shared screen, whose audience's age the "
        "request cannot tell",
    )
    taxonomy: str = Field(
        "",
        description="a category taxonomy file (the IAB Ad Product Taxonomy's TSV): the lists "
        "above may then name a whole branch, 'ID/*' or 'Name/*' (relative to the working "
        "directory)",
    )
    content_taxonomy: str = Field(
        "",
        description="a content taxonomy file (the IAB Content Taxonomy's TSV, same layout): a "
        "campaign excluding a content category then excludes every category under it, by id "
        "or name",
    )

    def restricted(self) -> list[str]:
        """``restricted_categories`` with every branch replaced by its categories."""
        return expand(self.restricted_categories, self._taxonomy())

    def place_blocks(self) -> dict[str, list[str]]:
        """``blocked_categories`` with every branch replaced by its categories."""
        taxonomy = self._taxonomy()
        return {k: expand(v, taxonomy) for k, v in self.blocked_categories.items()}

    def branches(self) -> Branches | None:
        """The ad category taxonomy's branches (``None``: no taxonomy)."""
        taxonomy = self._taxonomy()
        return Branches.of(taxonomy) if taxonomy else None

    def content_branches(self) -> Branches | None:
        """The content taxonomy's branches (``None``: none)."""
        return Branches.of(load_taxonomy(self.content_taxonomy)) if self.content_taxonomy else None

    def _taxonomy(self) -> Taxonomy | None:
        return load_taxonomy(self.taxonomy) if self.taxonomy else None

    @model_validator(mode="after")
    def _known(self) -> Protections:
        unknown = [t for t in self.shared_screens if t not in TOUCHPOINTS]
        if unknown:
            raise ValueError(f"shared_screens: unknown touchpoints {unknown}")
        if any(not c.strip() for c in self.restricted_categories):
            raise ValueError("restricted_categories: an empty category")
        places = {*TOUCHPOINTS, *SLOT_TOUCHPOINT, *SCENES}
        for name in ("blocked_categories", "blocked_attributes"):
            bad = [k for k in getattr(self, name) if k not in places]
            if bad:
                raise ValueError(f"{name}: {bad} are not touchpoints, slots or scenes")
        for key, numbers in self.blocked_attributes.items():
            wrong = [k for k in numbers if not 1 <= k <= len(CREATIVE_ATTRIBUTES)]
            if wrong:
                limit = len(CREATIVE_ATTRIBUTES)
                raise ValueError(
                    f"blocked_attributes.{key}: {wrong} are not OpenRTB creative attributes "
                    f"1-{limit}"
                )
        try:
            taxonomy = self._taxonomy()
        except ValueError as exc:
            raise ValueError(f"taxonomy: {exc}") from None
        try:
            if self.content_taxonomy:  # read (and kept) here; numbered once, by the rules
                load_taxonomy(self.content_taxonomy)
        except ValueError as exc:
            raise ValueError(f"content_taxonomy: {exc}") from None
        for key, entries in [
            ("restricted_categories", self.restricted_categories),
            *((f"blocked_categories.{k}", v) for k, v in self.blocked_categories.items()),
        ]:
            try:
                expand(entries, taxonomy)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return self


class SlotRule(_Strict):
    """What a slot accepts; ``max_ads`` > 1 makes it a pod."""

    formats: list[str] = Field(min_length=1)
    max_duration_s: float = Field(gt=0)
    max_ads: int = Field(1, ge=1, le=MAX_POD_ADS)
    max_total_duration_s: float | None = Field(None, gt=0)
    assistant_states: list[str] | None = Field(
        None,
        description="voice slots: the assistant states that take ads (None: any; a request "
        "whose state is unknown is taken)",
    )
    max_duration_by_state: dict[str, float] = Field(
        default_factory=dict, description="voice slots: a shorter length limit in some states"
    )

    @model_validator(mode="after")
    def _formats(self) -> SlotRule:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown formats {unknown}")
        states = [*(self.assistant_states or []), *self.max_duration_by_state]
        bad = [s for s in states if s not in ASSISTANT_STATES]
        if bad:
            raise ValueError(f"unknown assistant states {bad}")
        if any(not v > 0 for v in self.max_duration_by_state.values()):
            raise ValueError("max_duration_by_state: lengths must be positive")
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
    dedup_horizon: str = Field(
        "3d", description="an impression id reported again within this is a duplicate"
    )
    state_dir: str = Field(
        "data/state",
        description="admatch serve's embedded Redis keeps its append-only file here; '': none",
    )
    breaker_failures: int = Field(
        3, ge=1, le=100, description="calls in a row finding the store unavailable open the circuit"
    )
    breaker_backoff_ms: float = Field(
        100, gt=0, description="then the first probe after this; each failed probe doubles it"
    )
    breaker_max_backoff_ms: float = Field(
        1000, gt=0, le=60_000, description="probes at least this often while the store is down"
    )

    @model_validator(mode="after")
    def _url(self) -> StoreConfig:
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://", "memory://")):
            raise ValueError("url must start with redis://, rediss://, unix:// or memory://")
        days = parse_duration(self.retention) / 86_400
        if not 1 <= days <= 31:
            raise ValueError("retention must be between 1d and 31d")
        if parse_duration(self.max_ahead) > 86_400:
            raise ValueError("max_ahead must be at most 1d")
        if not 3_600 <= parse_duration(self.dedup_horizon) <= 30 * 86_400:
            raise ValueError("dedup_horizon must be between 1h and 30d")
        return self


Role = Literal["score", "events", "operator"]
ROLES: tuple[Role, ...] = ("score", "events", "operator")


class Principal(_Strict):
    """A caller the server knows: a name, its roles, and how it proves who it is (a bearer
    token, given as its SHA-256 or the environment variable holding it, and/or the identity in
    its client certificate under mutual TLS). Roles: ``score`` (Score, ScoreStream),
    ``events`` (RecordEvents), ``operator`` (ReloadModel)."""

    name: str = Field(min_length=1, description="who this is, in logs and refusals")
    roles: list[Role] = Field(min_length=1)
    token_sha256: str = Field("", description="hex SHA-256 of its bearer token")
    token_env: str = Field("", description="environment variable holding its bearer token")
    certificate: str = Field(
        "", description="its client certificate's common name or a subject alternative name"
    )

    @model_validator(mode="after")
    def _proof(self) -> Principal:
        if not (self.token_sha256 or self.token_env or self.certificate):
            raise ValueError(f"{self.name}: needs token_sha256, token_env or certificate")
        digest = self.token_sha256
        if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise ValueError(f"{self.name}: token_sha256 must be 64 lower-case hex digits")
        return self


class AuthConfig(_Strict):
    """Who may call what (docs/operations.md). ``required``: ``auto`` (on when principals are
    configured; with none, off on a loopback host and refused at start on any other), ``on``
    or ``off`` (anyone who reaches the port, even off loopback). Operator RPCs always need a
    credential with the operator role (or ``server.operator_token``)."""

    required: Literal["auto", "on", "off"] = "auto"
    principals: list[Principal] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> AuthConfig:
        names = [p.name for p in self.principals]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"principals: names given twice: {twice}")
        if self.required == "on" and not self.principals:
            raise ValueError("required = on needs at least one principal")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerConfig(_Strict):
    """How ``admatch serve`` listens and what it accepts (docs/operations.md)."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    threads: int = Field(
        256,
        ge=1,
        le=1024,
        description="request threads per process: at least max_streams + max_concurrent + 8",
    )
    compute_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="threads of each worker's feature computation (polars' pool, "
        "POLARS_MAX_THREADS): a server scales by processes (--workers), and a pool per "
        "worker wider than its share of the cores spins between requests",
    )
    max_candidates: int = Field(1000, ge=1, le=100_000, description="candidates per request")
    max_campaign_caps: int = Field(256, ge=0, le=100_000, description="per request")
    max_interests: int = Field(64, ge=0, le=10_000, description="interest tags per user")
    max_blocked: int = Field(
        256, ge=0, le=10_000, description="entries of each of a request's block lists"
    )
    max_string_chars: int = Field(
        128, ge=16, le=4096, description="every id, category and tag of a message"
    )
    max_events: int = Field(10_000, ge=1, le=1_000_000, description="per RecordEvents call")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="per message")
    max_concurrent: int = Field(
        64,
        ge=1,
        description="requests in flight (Score calls, ScoreStream messages, RecordEvents "
        "calls); more are refused with RESOURCE_EXHAUSTED. Health is never refused.",
    )
    max_streams: int = Field(
        128, ge=0, description="open ScoreStreams; more are refused with RESOURCE_EXHAUSTED"
    )
    stream_idle_timeout_s: float = Field(
        60.0, gt=0, description="a ScoreStream with no request in flight for this long ends"
    )
    default_deadline_ms: float = Field(
        1000.0, gt=0, description="time budget of a request that comes without a deadline"
    )
    max_deadline_ms: float = Field(
        10000.0, gt=0, description="longer client deadlines are cut to this"
    )
    drain_s: float = Field(
        0.0,
        ge=0,
        le=600,
        description="after SIGTERM, health says NOT_SERVING and calls are still answered this "
        "long, so that load balancers stop sending first",
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, le=600, description="then calls in flight get this long to finish"
    )
    batch_max: int = Field(
        32, ge=1, le=1024, description="requests decided in one pass at most; 1: no batching"
    )
    batch_window_ms: float = Field(
        4.0,
        ge=0,
        le=100,
        description="a pass waits up to this long for as many requests as the largest of the "
        "last passes took; 0: takes those queued",
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
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @model_validator(mode="after")
    def _capacity(self) -> ServerConfig:
        need = self.max_streams + self.max_concurrent + 8
        if self.threads < need:
            raise ValueError(
                f"threads {self.threads} < max_streams + max_concurrent + 8 = {need}: open "
                "streams and requests in flight would leave no thread for health checks"
            )
        return self

    @model_validator(mode="after")
    def _auth(self) -> ServerConfig:
        auth = self.auth
        if auth.required == "auto" and not auth.principals and not is_loopback(self.host):
            raise ValueError(
                f"auth: host {self.host!r} is not loopback and no credentials are configured: "
                'add [[server.auth.principals]], or set server.auth.required = "off" to '
                "serve anyone who reaches the port"
            )
        certified = [p.name for p in auth.principals if p.certificate]
        if certified and not self.tls_client_ca_file:
            raise ValueError(
                f"auth: principals {certified} prove themselves by certificate: that needs "
                "mutual TLS (tls_client_ca_file)"
            )
        return self

    @property
    def auth_on(self) -> bool:
        """Whether calls must carry credentials (``auth.required`` resolved)."""
        return self.auth.required == "on" or (
            self.auth.required == "auto" and bool(self.auth.principals)
        )


class DecisionLogConfig(_Strict):
    """The service's decision and event logs (engine/logs/decisions.py, docs/loop.md)."""

    dir: str = Field("", description="a directory or pyarrow filesystem URI; empty: no logs")
    spool_dir: str = Field(
        "", description="a local directory for the decision spool; empty: <dir>/spool"
    )
    spool_gb: float = Field(
        2.0, gt=0, description="unconverted spool beyond this: decisions dropped and counted"
    )
    rotate_s: float = Field(60.0, gt=0, le=86_400, description="a file is finalised this often")
    rotate_mb: float = Field(64.0, gt=0, description="or when it has grown this big")
    queue: int = Field(10_000, ge=1, description="items waiting to be written; more are dropped")
    retention_days: float = Field(30.0, gt=0, description="older files are deleted")
    retention_gb: float = Field(10.0, gt=0, description="and the oldest beyond this total")
    engaged_window: str = Field("1h", description="the join counts an engagement this long")
    converted_window: str = Field("7d", description="a conversion this long after a decision")
    negative_window: str = Field("1h", description="negative feedback this long")

    @model_validator(mode="after")
    def _windows(self) -> DecisionLogConfig:
        for name in ("engaged_window", "converted_window", "negative_window"):
            parse_duration(getattr(self, name))  # raises, naming the value
        if self.dir and not self.spool:
            raise ValueError(
                f"spool_dir: set a local directory for the decision spool: dir {self.dir!r} is "
                "not a local path"
            )
        return self

    @property
    def spool(self) -> str:
        """The spool's local directory (empty: none, ``dir`` is not local)."""
        return self.spool_of(self.dir)

    def spool_of(self, directory: str) -> str:
        """The spool of the decision log ``directory``: ``spool_dir``, else
        ``<directory>/spool`` when it is local (empty otherwise)."""
        if self.spool_dir:
            return self.spool_dir
        return "" if "://" in directory else os.path.join(directory, "spool")


class ExplorationConfig(_Strict):
    """A small, known randomisation of the scoring parameters (engine/scoring/explore.py):
    a request is decided by one of ``variants`` parameter sets drawn around the current ones
    with probability ``share`` (per slot or touchpoint in ``slots``), else by the current ones."""

    share: float = Field(0.0, ge=0, le=0.5, description="exploration share; 0: off")
    slots: dict[str, float] = Field(
        default_factory=dict, description="slot or touchpoint -> share, overriding `share`"
    )
    variants: int = Field(8, ge=1, le=64, description="parameter sets drawn around the current")
    spread: float = Field(
        0.1, gt=0, le=1, description="normal step of each parameter, in units of its tuning range"
    )
    seed: int = Field(0, ge=0, description="of the variants and of each request's draw")

    @model_validator(mode="after")
    def _slots(self) -> ExplorationConfig:
        for key, value in self.slots.items():
            if key not in SLOT_TOUCHPOINT and key not in TOUCHPOINTS:
                raise ValueError(f"slots: {key!r} is neither a slot nor a touchpoint")
            if not 0 <= value <= 0.5:
                raise ValueError(f"slots.{key}: a share must be 0 to 0.5, got {value}")
        return self

    def share_of(self, slot: str, touchpoint: str) -> float:
        """The share of a slot: its own, else its touchpoint's, else ``share``."""
        return self.slots.get(slot, self.slots.get(touchpoint, self.share))


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
    negative_z: float = Field(
        0.0,
        ge=0,
        le=5,
        description="a negative-feedback bound holds when the estimate plus this many standard "
        "errors is under it (1.64: 95% one-sided); 0 judges the point estimate",
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
        100, ge=0, description="trials resting on fewer matched logged events are flagged"
    )
    require_fill: bool = Field(
        True, description="a trial whose policy never shows an ad is flagged (never recommended)"
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
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    decision_log: DecisionLogConfig = Field(default_factory=DecisionLogConfig)
    protections: Protections = Field(default_factory=Protections)

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
