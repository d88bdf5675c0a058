"""Covariate drift on simple, explainable prompt features: length and out-of-vocabulary rate.

Both detectors turn each prompt into one number and compare the recent distribution of that number
with the reference one by the Population Stability Index,

    PSI = Σ_bins (recent_share − reference_share) · ln(recent_share / reference_share),

over bins cut at the reference's quantiles (so each holds about the same share of the reference;
repeated values such as many equal lengths merge bins rather than leave empty ones). Shares are
clipped at `epsilon` so a bin empty on one side adds a large but finite term instead of infinity.

Reading PSI, by the convention credit-scoring practice made common: below 0.1 the populations are
"the same" for practical purposes, 0.1–0.25 is a moderate shift worth a look, above 0.25 a major
shift that calls for action. The default threshold 0.2 acts on shifts well past noise without
waiting for the "major" level. PSI is not a test: with no drift at all it still averages about
(bins − 1) · (1/n_reference + 1/n_recent) from sampling noise alone (≈ 0.1 for 10 bins and 100
recent prompts), which is why `min_recent` defaults to 100 rather than a handful.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from tuneloop.monitoring.drift.base import DetectorConfig, DriftDetector, DriftResult, fmt, register
from tuneloop.platform.errors import ConfigError

Vector = npt.NDArray[np.float64]
WORD = re.compile(r"\w+")


class PsiConfig(DetectorConfig):
    """Settings shared by the PSI detectors."""

    min_reference: int = Field(100, ge=2, description="Fewest reference prompts to cut bins from.")
    min_recent: int = Field(
        100, ge=2, description="Fewest recent prompts; PSI's noise floor grows as this shrinks."
    )
    threshold: float = Field(0.2, gt=0, description="Drift when PSI exceeds this (0.1/0.25 conventions).")
    bins: int = Field(10, ge=2, le=100, description="Quantile bins cut from the reference (deciles).")
    epsilon: float = Field(1e-4, gt=0, lt=0.01, description="Floor for a bin's share, keeping PSI finite.")


def quantile_edges(reference: Vector, bins: int) -> Vector:
    """Inner bin edges at the reference's quantiles; duplicates (ties) are merged."""
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_shares(values: Vector, edges: Vector, epsilon: float) -> Vector:
    """Share of `values` in each bin (edges[i-1], edges[i]], clipped below at `epsilon`."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return np.maximum(counts / max(len(values), 1), epsilon)


def psi(reference: Vector, recent: Vector, bins: int = 10, epsilon: float = 1e-4) -> float:
    """Population Stability Index of `recent` against `reference`, bins from the reference."""
    edges = quantile_edges(reference, bins)
    ref, rec = bin_shares(reference, edges, epsilon), bin_shares(recent, edges, epsilon)
    return float(np.sum((rec - ref) * np.log(rec / ref)))


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is not a word."""
    return WORD.findall(text.lower())


P = TypeVar("P", bound=PsiConfig)


class PsiDetector(DriftDetector[str, P], Generic[P]):
    """A PSI comparison of one per-prompt feature; subclasses say what the feature is."""

    unit = "prompts"
    feature_name: ClassVar[str]  # for explanations: "prompt lengths", "out-of-vocabulary rates"
    # How explanations summarise each side: a median length reads well, a median OOV rate is often 0.
    summary_name: ClassVar[str] = "median"

    def _summary(self, values: Vector) -> float:
        return float(np.median(values))

    @abstractmethod
    def _features(self, reference: Sequence[str], recent: Sequence[str]) -> tuple[Vector, Vector, str]:
        """(reference values, recent values, unit of the values for explanations)."""

    def _compare(self, reference: Sequence[str], recent: Sequence[str]) -> DriftResult:
        cfg = self.config
        ref, rec, value_unit = self._features(reference, recent)
        score = psi(ref, rec, cfg.bins, cfg.epsilon)
        drift = score > cfg.threshold
        before, after = self._summary(ref), self._summary(rec)
        summary = f"{self.summary_name} {fmt(before)} → {fmt(after)} {value_unit}"
        verdict = (
            f"shifted: PSI {fmt(score)} > {cfg.threshold:g}"
            if drift
            else (f"stable: PSI {fmt(score)} ≤ {cfg.threshold:g}")
        )
        return self.decided(
            drift,
            f"{self.feature_name} {verdict} ({summary})",
            score=score,
            threshold=cfg.threshold,
            sampled=(len(reference), len(recent)),
            details={
                f"reference_{self.summary_name}": before,
                f"recent_{self.summary_name}": after,
                "n_reference_compared": len(ref),
                "bins_used": len(quantile_edges(ref, cfg.bins)) + 1,
            },
        )


class LengthConfig(PsiConfig):
    """PSI on prompt length."""

    tokenizer: Path | None = Field(
        None,
        description="A Hugging Face tokenizer.json (or a model folder holding one): count lengths in "
        "its tokens, as the model sees them. None: count words.",
    )


@register
class PromptLengthDetector(PsiDetector[LengthConfig]):
    """Prompt length (words, or tokens of a given tokenizer): longer or shorter prompts than trained on
    are the cheapest sign of new use cases, pasted documents or truncated clients."""

    name = "prompt_length"
    config_model = LengthConfig
    feature_name = "prompt lengths"

    def _lengths(self, texts: Sequence[str]) -> tuple[Vector, str]:
        path = self.config.tokenizer
        if path is None:
            return np.array([len(words(t)) for t in texts], dtype=np.float64), "words"
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(
                f"prompt_length tokenizer {path} has no tokenizer.json; give its file or folder"
            )
        encoded = Tokenizer.from_file(str(file)).encode_batch(list(texts), add_special_tokens=False)
        return np.array([len(e.ids) for e in encoded], dtype=np.float64), "tokens"

    def _features(self, reference: Sequence[str], recent: Sequence[str]) -> tuple[Vector, Vector, str]:
        # Recomputed per check: counting is linear and cheap next to loading any cache.
        ref, value_unit = self._lengths(reference)
        rec, _ = self._lengths(recent)
        return ref, rec, value_unit


class OovConfig(PsiConfig):
    """PSI on the out-of-vocabulary rate."""

    min_reference: int = Field(
        200, ge=4, description="Fewest training prompts (split into vocabulary and held-out halves)."
    )
    vocabulary_share: float = Field(
        0.5, gt=0, lt=1, description="Share of the reference whose words form the vocabulary."
    )
    seed: int = Field(0, description="Seed of the vocabulary / held-out split (reproducible).")


@register
class OovRateDetector(PsiDetector[OovConfig]):
    """Share of each prompt's words never seen in the training inputs: new products, jargon, names,
    languages or code show up here before they show up in quality.

    A prompt's own words are always in a vocabulary built from it, so the reference distribution
    cannot be measured in-sample (it would be all zeros). The reference is therefore split, seeded:
    `vocabulary_share` of it builds the vocabulary, and the held-out rest gives the reference OOV
    rates. Recent prompts are scored against the same vocabulary, so both sides are comparable.
    """

    name = "oov_rate"
    config_model = OovConfig
    feature_name = "out-of-vocabulary rates"
    summary_name = "mean"

    def _summary(self, values: Vector) -> float:
        return float(np.mean(values))

    def _features(self, reference: Sequence[str], recent: Sequence[str]) -> tuple[Vector, Vector, str]:
        cfg = self.config
        order = np.random.default_rng(cfg.seed).permutation(len(reference))
        cut = min(max(round(cfg.vocabulary_share * len(reference)), 1), len(reference) - 1)
        vocabulary = {w for i in order[:cut] for w in words(reference[i])}
        held_out = [reference[i] for i in order[cut:]]
        return self._rates(held_out, vocabulary), self._rates(recent, vocabulary), "of words unknown"

    @staticmethod
    def _rates(texts: Sequence[str], vocabulary: set[str]) -> Vector:
        rates = []
        for text in texts:
            tokens = words(text)
            # A prompt with no words has nothing unknown in it.
            rates.append(sum(t not in vocabulary for t in tokens) / len(tokens) if tokens else 0.0)
        return np.array(rates, dtype=np.float64)
