"""The interface every drift detector implements, its result, and the registry that finds one by name.

A detector compares a *reference* sample (what the live model was trained or accepted on: training
prompts, deploy-time evaluation scores, deploy-time correctness) with a *recent* sample (captured
traffic, live scores, feedback) and answers with a `DriftResult`. Detectors never decide on too
little data: below the configured minimum sample sizes the decision is "not_enough_data", which a
drift policy must treat as "no evidence either way", not as "no drift".

Each detector family lives in one module of this package and registers its classes with `@register`;
`get(name)` imports the built-in modules on first use, so importing this module stays cheap (no
torch, no sentence-transformers).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop.platform.errors import ConfigError, TuneloopError
from tuneloop.platform.plugins import Plugins

Decision = Literal["drift", "no_drift", "not_enough_data"]

# Modules of this package that hold built-in detectors; importing one registers its classes.
BUILTIN_MODULES = ("embedding", "covariate", "quality", "sequential")


class DriftInputError(TuneloopError):
    """The samples handed to a detector cannot be compared (NaN scores, a non-positive baseline, ...)."""


@dataclass(frozen=True)
class DriftResult:
    """What one comparison found; `explanation` is one sentence meant for a dashboard or an alert.

    `score` is the detector's statistic (PSI, MMD², a score drop, an accuracy drop) and `threshold`
    the value it is compared with; tests also give `p_value` and the `alpha` it must fall below.
    Both are None when the decision is "not_enough_data". `details` holds detector-specific facts
    (e.g. which embedder produced the embeddings).
    """

    detector: str
    decision: Decision
    score: float | None
    threshold: float | None
    n_reference: int
    n_recent: int
    explanation: str
    p_value: float | None = None
    alpha: float | None = None
    details: Mapping[str, str | float | int] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return self.decision == "drift"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (NaN never appears: undefined values are None)."""
        out = asdict(self)
        out["details"] = dict(self.details)
        return out


class DetectorConfig(BaseModel):
    """Settings every detector has: how much data it needs and which part of `recent` it looks at.

    Subclasses add their thresholds and override these defaults where their statistic needs more
    (or less) data to be trustworthy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_reference: int = Field(
        100, ge=2, description="Fewest reference samples a decision may rest on; fewer: not_enough_data."
    )
    min_recent: int = Field(
        50, ge=2, description="Fewest recent samples a decision may rest on; fewer: not_enough_data."
    )
    window: int | None = Field(
        None,
        ge=2,
        description="Compare only the last `window` recent samples (recent is oldest first); "
        "None compares everything given. A window shorter than min_recent is refused.",
    )

    @model_validator(mode="after")
    def _window_fits_minimum(self) -> Self:
        if self.window is not None and self.window < self.min_recent:
            raise ValueError(
                f"window={self.window} is below min_recent={self.min_recent}: every check would say "
                "not_enough_data; raise window or lower min_recent"
            )
        return self


S = TypeVar("S")  # one sample: a prompt, a score, a correctness flag
C = TypeVar("C", bound=DetectorConfig)


class DriftDetector(ABC, Generic[S, C]):
    """Compares a reference sample with a recent one. Subclasses set `name`, `unit`, `config_model`
    and implement `_compare`; `check` applies the window and the minimum sample sizes first."""

    name: ClassVar[str]
    unit: ClassVar[str]  # plural noun for explanations: "prompts", "scores", "labels"
    config_model: ClassVar[type[DetectorConfig]]

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.config_model()  # type: ignore[assignment]

    def check(self, reference: Sequence[S], recent: Sequence[S]) -> DriftResult:
        """Compare `recent` (oldest first; only the last `window` are used) with `reference`."""
        cfg = self.config
        if cfg.window is not None:
            recent = recent[-cfg.window :]
        if len(reference) < cfg.min_reference or len(recent) < cfg.min_recent:
            return self.not_enough_data(len(reference), len(recent))
        return self._compare(reference, recent)

    @abstractmethod
    def _compare(self, reference: Sequence[S], recent: Sequence[S]) -> DriftResult:
        """The comparison itself; called only with enough samples on both sides."""

    def decided(
        self,
        drift: bool,
        text: str,
        *,
        score: float,
        threshold: float,
        sampled: tuple[int, int],
        details: Mapping[str, str | float | int],
        p_value: float | None = None,
        alpha: float | None = None,
    ) -> DriftResult:
        """The result of a comparison that decided; `text` says what was seen, and the explanation
        ends with the sample sizes, `sampled` = (n_reference, n_recent)."""
        n_reference, n_recent = sampled
        return DriftResult(
            detector=self.name,
            decision="drift" if drift else "no_drift",
            score=score,
            threshold=threshold,
            n_reference=n_reference,
            n_recent=n_recent,
            explanation=f"{text} {sizes(n_recent, n_reference, self.unit)}",
            p_value=p_value,
            alpha=alpha,
            details=details,
        )

    def not_enough_data(self, n_reference: int, n_recent: int) -> DriftResult:
        cfg = self.config
        short = []
        if n_recent < cfg.min_recent:
            short.append(f"{n_recent} recent {self.unit} < {cfg.min_recent} required")
        if n_reference < cfg.min_reference:
            short.append(f"{n_reference} reference {self.unit} < {cfg.min_reference} required")
        return DriftResult(
            detector=self.name,
            decision="not_enough_data",
            score=None,
            threshold=None,
            n_reference=n_reference,
            n_recent=n_recent,
            explanation=f"{self.name}: not enough data to decide ({'; '.join(short)})",
        )


def sizes(n_recent: int, n_reference: int, unit: str) -> str:
    """The tail every explanation ends with: "over 120 recent vs 800 reference prompts"."""
    return f"over {n_recent} recent vs {n_reference} reference {unit}"


def fmt(value: float) -> str:
    """Numbers in explanations: 3 significant digits, small values in scientific notation."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}"


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (one-sided p-value of a z statistic); no scipy needed."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


PLUGINS: Plugins[DriftDetector[Any, Any]] = Plugins(
    "drift detector", "detectors", __package__, BUILTIN_MODULES
)
D = TypeVar("D", bound=type[DriftDetector[Any, Any]])


def register(cls: D) -> D:
    """Class decorator: make `cls` available as `get(cls.name)`."""
    return PLUGINS.register(cls)


def names() -> list[str]:
    """Names of every registered detector, sorted."""
    return PLUGINS.names()


def get(name: str, config: DetectorConfig | Mapping[str, Any] | None = None) -> DriftDetector[Any, Any]:
    """The detector registered as `name`, configured by `config` (its config model or a mapping of
    its fields). An unknown name is a ConfigError listing the known ones; a bad config is a
    ConfigError listing every invalid field at once."""
    cls = PLUGINS.lookup(name)
    if config is None or isinstance(config, cls.config_model):
        return cls(config)
    if isinstance(config, DetectorConfig):
        raise ConfigError(
            f"drift detector {name!r} takes a {cls.config_model.__name__}, not a {type(config).__name__}"
        )
    try:
        return cls(cls.config_model.model_validate(dict(config)))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid config for drift detector {name!r}: {problems}") from None
