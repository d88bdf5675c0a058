"""Errors of a training run that a user can act on (bad input is `ConfigError`/`DataError` instead)."""

from tuneloop.platform.errors import TuneloopError


class TrainingError(TuneloopError):
    """Training ran but produced nothing to publish (every trial failed, no checkpoint was written)."""
