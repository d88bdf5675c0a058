"""Drift detectors: is recent traffic or quality still what the live version was trained and accepted on?

`get(name, config)` returns a configured detector by name; `names()` lists them:

* `embedding` — input drift: MMD² two-sample test on sentence embeddings, permutation p-value.
* `prompt_length`, `oov_rate` — covariate drift: PSI on prompt length and out-of-vocabulary rate.
* `eval_score`, `feedback_accuracy` — quality drift: live scores vs deploy time, and concept drift
  on labelled feedback.

Every `check(reference, recent)` returns a `DriftResult` whose decision is "drift", "no_drift" or
"not_enough_data". Importing this package does not import torch or sentence-transformers.
"""

from tuneloop.monitoring.drift.base import (
    DetectorConfig,
    DriftDetector,
    DriftInputError,
    DriftResult,
    get,
    names,
    register,
)

__all__ = ["DetectorConfig", "DriftDetector", "DriftInputError", "DriftResult", "get", "names", "register"]
