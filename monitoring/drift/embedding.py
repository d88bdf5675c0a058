"""Input drift: are recent prompts drawn from the same distribution as the training inputs?

A two-sample test on sentence embeddings. The statistic is the squared maximum mean discrepancy
(MMD², the unbiased estimator) with a Gaussian RBF kernel k(a, b) = exp(-‖a − b‖² / h), where h is
the median squared distance between all pooled points (the "median heuristic": the kernel then
neither saturates to 1 nor vanishes to 0 whatever the embedding scale). The p-value comes from a
permutation test: reference/recent labels are shuffled `permutations` times with a seeded generator,
and p = (1 + #{permuted MMD² ≥ observed}) / (1 + permutations). That p-value is exact under "no
drift" for any sample sizes, so the false-alarm rate per check is at most `alpha` by construction,
which a fixed MMD threshold could not promise.

Embeddings come from `embedders` (MiniLM offline, or hashed character n-grams where MiniLM is not
installed); the result's `details["embedder"]` says which. Reference embeddings are computed once
per reference sample and kept, since the scheduler checks new windows against the same training
inputs again and again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
from pydantic import Field, model_validator

from tuneloop.monitoring.drift.base import (
    DetectorConfig,
    DriftDetector,
    DriftResult,
    fmt,
    register,
)
from tuneloop.monitoring.drift.embedders import Embedder, EmbedderName, Matrix, resolve

REFERENCE_CACHE_SIZE = 4  # reference samples (e.g. one per adapter) whose embeddings are kept


class EmbeddingConfig(DetectorConfig):
    """Settings of the embedding MMD test. Defaults favour few false alarms: a drift alarm may start a
    retraining job, so alpha is 0.01 rather than the textbook 0.05."""

    min_reference: int = Field(100, ge=2, description="Fewest training prompts to compare with.")
    min_recent: int = Field(50, ge=2, description="Fewest recent prompts a decision may rest on.")
    window: int | None = Field(
        1000,
        ge=2,
        description="Compare only the last `window` recent prompts; also bounds the cost, which grows "
        "with (reference + recent)² × permutations. None: all given.",
    )
    max_reference: int = Field(
        1000, ge=2, description="Larger reference samples are subsampled (seeded) to this many prompts."
    )
    alpha: float = Field(0.01, gt=0, lt=1, description="Drift when the permutation p-value is below this.")
    permutations: int = Field(
        200, ge=19, le=100_000, description="Label shuffles for the p-value; its resolution is 1/(1+this)."
    )
    seed: int = Field(0, description="Seed of the permutations and of reference subsampling (reproducible).")
    embedder: EmbedderName = Field(
        "auto", description="minilm, hashed, or auto (MiniLM where installed, else hashed n-grams)."
    )
    model_path: Path | None = Field(
        None, description="A sentence-transformers model folder to use instead of the bundled MiniLM."
    )
    device: str | None = Field(None, description="torch device for MiniLM (default cpu).")
    batch_size: int = Field(64, ge=1, description="Texts embedded per forward pass (bounds memory).")

    @model_validator(mode="after")
    def _alpha_reachable(self) -> Self:
        if self.alpha < 1 / (1 + self.permutations):
            raise ValueError(
                f"alpha={self.alpha} is below the smallest p-value {self.permutations} permutations can "
                f"give (1/{1 + self.permutations}): raise permutations or alpha"
            )
        return self


def _fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        data = text.encode()
        # Length prefixes keep ["ab", "c"] and ["a", "bc"] apart.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def mmd_permutation_test(
    x: Matrix, y: Matrix, permutations: int, rng: np.random.Generator
) -> tuple[float, np.ndarray, float]:
    """(observed unbiased MMD², the MMD² of every permutation, the kernel bandwidth h).

    The kernel matrix of the pooled sample is computed once; every permutation is then a relabelling,
    evaluated for all permutations together as one matrix product (no Python loop over them).
    """
    n, m = len(x), len(y)
    pooled = np.vstack([x, y])
    sq = np.einsum("ij,ij->i", pooled, pooled)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    off_diagonal = d2[np.triu_indices(len(pooled), k=1)]
    h = float(np.median(off_diagonal))
    if h <= 0:  # more than half the pairs identical: fall back to the mean so the kernel stays defined
        h = float(off_diagonal.mean()) or 1.0
    kernel = np.exp(-d2 / h)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimator leaves out k(a, a)

    # Column 0 is the observed labelling; the others are shuffles. 1.0 marks "reference".
    observed = np.r_[np.ones(n), np.zeros(m)]
    shuffled = rng.random((permutations, n + m)).argsort(axis=1) < n
    labels = np.column_stack([observed, shuffled.T.astype(np.float64)])
    k_labels = kernel @ labels
    s_xx = np.einsum("ip,ip->p", labels, k_labels)
    s_xy = np.einsum("ip,ip->p", 1.0 - labels, k_labels)
    s_yy = kernel.sum() - s_xx - 2.0 * s_xy
    mmd2 = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    return float(mmd2[0]), mmd2[1:], h


@register
class EmbeddingDetector(DriftDetector[str, EmbeddingConfig]):
    """Recent prompts vs training prompts: MMD² on sentence embeddings with a permutation p-value."""

    name = "embedding"
    unit = "prompts"
    config_model = EmbeddingConfig

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        super().__init__(config)
        self._embedder: Embedder | None = None
        self._reference_cache: OrderedDict[tuple[str, str], Matrix] = OrderedDict()

    @property
    def embedder(self) -> Embedder:
        """Built on first use: loading MiniLM takes seconds and needs torch."""
        if self._embedder is None:
            cfg = self.config
            self._embedder = resolve(cfg.embedder, model_path=cfg.model_path, device=cfg.device)
        return self._embedder

    def reference_embeddings(self, reference: Sequence[str]) -> Matrix:
        """Embeddings of (a seeded subsample of at most max_reference of) `reference`, cached."""
        cfg = self.config
        key = (self.embedder.name, _fingerprint(reference))
        if key in self._reference_cache:
            self._reference_cache.move_to_end(key)
            return self._reference_cache[key]
        texts = list(reference)
        if len(texts) > cfg.max_reference:
            picked = np.random.default_rng(cfg.seed).choice(len(texts), cfg.max_reference, replace=False)
            texts = [texts[i] for i in np.sort(picked)]
        rows = self.embedder.embed(texts, cfg.batch_size)
        self._reference_cache[key] = rows
        if len(self._reference_cache) > REFERENCE_CACHE_SIZE:
            self._reference_cache.popitem(last=False)
        return rows

    def _compare(self, reference: Sequence[str], recent: Sequence[str]) -> DriftResult:
        cfg = self.config
        x = self.reference_embeddings(reference)
        y = self.embedder.embed(list(recent), cfg.batch_size)
        # One generator per check, seeded: the same inputs always give the same p-value.
        rng = np.random.default_rng(cfg.seed)
        mmd2, null, bandwidth = mmd_permutation_test(x, y, cfg.permutations, rng)
        p_value = (1 + int(np.sum(null >= mmd2))) / (1 + cfg.permutations)
        threshold = float(np.quantile(null, 1 - cfg.alpha))
        drift = p_value < cfg.alpha
        name = self.embedder.name
        stats = f"MMD² {fmt(mmd2)} (null {100 * (1 - cfg.alpha):g}th pct {fmt(threshold)}), p={fmt(p_value)}"
        if drift:
            text = f"recent prompts moved away from the training inputs in {name} embedding space: {stats}"
            text += f" < {cfg.alpha:g}"
        else:
            text = f"recent prompts look like the training inputs in {name} embedding space: {stats}"
            text += f" ≥ {cfg.alpha:g}"
        return self.decided(
            drift,
            text,
            score=mmd2,
            threshold=threshold,
            p_value=p_value,
            alpha=cfg.alpha,
            sampled=(len(reference), len(recent)),
            details={
                "embedder": name,
                "embedding_dim": self.embedder.dim,
                "bandwidth": bandwidth,
                "permutations": cfg.permutations,
                "n_reference_used": len(x),
            },
        )
