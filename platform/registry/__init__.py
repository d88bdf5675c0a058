"""The registry: adapters, versions, aliases, jobs, evaluations and events, in SQL."""

from tuneloop.platform.registry.registry import Registry

__all__ = ["Registry"]
