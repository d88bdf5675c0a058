"""Exceptions a user can act on.

Each carries a message that names the offending value and what to do about it. The CLI prints
`TuneloopError`s as one line; anything else is a bug and keeps its traceback.
"""


class TuneloopError(Exception):
    """Base of every error meant for a user rather than a developer."""


class ConfigError(TuneloopError):
    """A setting, job spec or command-line value is invalid."""


class NotFoundError(TuneloopError):
    """A named thing (adapter, version, alias, model, file) does not exist."""


class ConflictError(TuneloopError):
    """The operation would overwrite something that must stay as it is."""


class StaleAliasError(ConflictError):
    """An alias no longer points at the version the caller compared against (someone moved it)."""


class ArtifactError(TuneloopError):
    """An artifact is missing, incomplete, or in a format tuneloop refuses to load."""


class DatabaseUnreachableError(TuneloopError):
    """The registry's database cannot be reached or refused the connection (the URL is shown
    without its password)."""
