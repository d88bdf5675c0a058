"""Checks a job passes before anything is started: where its base model is, and what the registry
would refuse at publish time (a missing parent, an adapter name taken by another base model).

Each returns problems as lines rather than raising, so the recipe can report them together with
the spec's, the search space's and every bad data line in one error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.platform.basemodels import resolve_model
from tuneloop.platform.errors import NotFoundError
from tuneloop.platform.hub import is_hub_id
from tuneloop.platform.spec import JobSpec

if TYPE_CHECKING:
    from tuneloop.platform.registry import Registry


def base_model(ref: str, problems: list[str]) -> tuple[Path | None, str]:
    """(model folder, the name the registry and the adapter record) for a spec's base_model: the folder
    itself for a folder or a pulled name, the id as given for a Hugging Face id (its cache folder
    differs from machine to machine; replicas resolve the id the same way)."""
    try:
        folder = resolve_model(ref)
    except NotFoundError as exc:
        problems.append(f"base_model: {exc}")
        return None, ref
    return folder, ref if is_hub_id(ref) else str(folder)


def lineage_problems(registry: Registry, spec: JobSpec, base_ref: str) -> list[str]:
    """What the registry would refuse at publish time, found before any compute is spent."""
    problems = []
    if spec.output.parent:
        try:
            registry.get_version(spec.output.parent)
        except NotFoundError:
            problems.append(f"output.parent {spec.output.parent!r} is not a version in the registry")
    if spec.output.init_from:
        problems += _init_problems(registry, spec, base_ref)
    try:
        existing = registry.list_versions(spec.output.adapter)
    except NotFoundError:
        existing = []
    if existing and existing[0].adapter.base_model != base_ref:
        problems.append(
            f"output.adapter {spec.output.adapter!r} is trained on {existing[0].adapter.base_model!r}, not "
            f"{base_ref!r}: use a new adapter name for another base model"
        )
    return problems


def _init_problems(registry: Registry, spec: JobSpec, base_ref: str) -> list[str]:
    """A warm start needs a stored version of the same method on the same base, of a PEFT method."""
    from tuneloop.train import methods

    ref = str(spec.output.init_from)
    try:
        version = registry.get_version(ref)
    except NotFoundError:
        return [f"output.init_from {ref!r} is not a version in the registry"]
    problems = []
    if not isinstance(methods.get(spec.method.name), methods.PeftMethod):
        problems.append(f"output.init_from works for PEFT methods only, not {spec.method.name!r}")
    if version.method != spec.method.name:
        problems.append(
            f"output.init_from {ref} was trained with {version.method!r}, not {spec.method.name!r}"
        )
    if version.adapter.base_model != base_ref:
        problems.append(f"output.init_from {ref} is on {version.adapter.base_model!r}, not {base_ref!r}")
    return problems
