"""Promotion: which versions may go live, and the one call that puts one live.

A version goes live when an alias points at it. `promote` is the only way tuneloop moves an alias
forward (the CLI's `adapters promote`, the monitoring loop's gate, the demo): it asks
`check_promotable` first, then the registry's compare-and-set (`Registry.promote` with `expected`),
so a version vLLM cannot serve never goes live and a promotion made by someone else meanwhile is
never overwritten. How a version is served comes from its manifest, else from the method table
(`artifacts.SERVING_BY_METHOD`); the gateway's resolver refuses what cannot be served with the same
words (`unservable_reason`, `engine_only_reason`). Serving replicas follow the alias by themselves
(serve/routing/follower.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import cast, get_args

from tuneloop.platform.adapters import (
    ADAPTER_CONFIG,
    check_lora_targets,
    engine_lora_targets,
    lora_rank,
    read_adapter_config,
)
from tuneloop.platform.artifacts import SERVING_BY_METHOD, ArtifactStore, Serving
from tuneloop.platform.errors import ArtifactError, ConfigError, NotFoundError
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Version


def promote(
    registry: Registry,
    alias: str,
    ref: str,
    *,
    reason: str = "",
    expected: str | None = None,
    store: ArtifactStore | None = None,
) -> Version:
    """Point `alias` at version `ref` if it can be served; `expected` is the version the caller saw
    live ("" for none; None checks nothing): a StaleAliasError if the alias moved since."""
    check_promotable(registry.get_version(ref), store or ArtifactStore())
    return registry.promote(alias, ref, reason, expected=expected)


def serving_of(version: Version, store: ArtifactStore | None = None) -> Serving:
    """How `version` is served: its manifest says so; older rows fall back to the stored manifest,
    then to the method table (anything unknown is "none", refused rather than guessed)."""
    declared = (version.manifest or {}).get("serving")
    if declared in get_args(Serving):
        return cast(Serving, declared)
    if store is not None:
        try:
            return store.manifest(version.adapter.name, version.number).serving
        except (NotFoundError, ArtifactError):
            pass
    return SERVING_BY_METHOD.get(version.method, "none")


def unservable_reason(ref: str, method: str, serving: Serving) -> str | None:
    """Why a version can never be served by vLLM (serving "none"), naming its method; else None."""
    if serving != "none":
        return None
    return (
        f"{ref} was trained with {method}, which vLLM cannot serve (prefix tuning, IA3 and bottleneck "
        "adapters have no vLLM support); it cannot be promoted or called — retrain it with lora"
    )


def engine_only_reason(ref: str, method: str) -> str:
    """What a LoRA replica answers for a full or partial fine-tune, which needs an engine of its own."""
    return (
        f"{ref} is a {method} fine-tune: it is served as its own base model, not as an adapter on this "
        f"replica; serve it with `tuneloop serve --model {ref}`"
    )


def check_stored_lora_targets(version: Version, store: ArtifactStore, allowed: Sequence[str] | None) -> None:
    """`check_lora_targets` for a stored LoRA version (fetched to a temporary folder, checksummed),
    and its adapter_config.json must be well formed (a readable rank). `allowed` None (engines not
    restricted) checks nothing: nothing is fetched."""
    if allowed is None or serving_of(version, store) != "lora":
        return
    with tempfile.TemporaryDirectory(prefix="tuneloop-check-") as tmp:
        folder = store.fetch(version.adapter.name, version.number, Path(tmp) / "v")
        try:
            lora_rank(read_adapter_config(folder), folder / ADAPTER_CONFIG)
            check_lora_targets(folder, allowed)
        except (ArtifactError, ConfigError) as exc:
            raise type(exc)(str(exc).replace(str(folder), version.ref)) from None


def check_promotable(version: Version, store: ArtifactStore) -> Serving:
    """How `version` would be served, or a ConfigError saying why it cannot go live: a method vLLM
    cannot serve, or LoRA weights on modules the serving engines do not adapt. The CLI's promote
    and the monitoring loop's gate both ask this before `Registry.promote`."""
    serving = serving_of(version, store)
    reason = unservable_reason(version.ref, version.method, serving)
    if reason:
        raise ConfigError(reason)
    check_stored_lora_targets(version, store, engine_lora_targets())
    return serving
