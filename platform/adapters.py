"""Adapter folders: reading a PEFT adapter's config and weights, the LoRA checks the serving engines
need, and importing a PEFT adapter trained elsewhere.

What may be promoted, and how each method is served, is platform/promotion.py. An import is checked
before anything is stored: safetensors only, a PEFT type tuneloop knows, a LoRA rank the engine
accepts, and weight shapes that fit the base model (read from the safetensors headers, no torch).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.platform.artifacts import REFUSED_SUFFIXES, SERVING_BY_METHOD, ArtifactStore, Manifest, Serving
from tuneloop.platform.basemodels import resolve_model, same_base_model
from tuneloop.platform.errors import ArtifactError, ConfigError, ConflictError, NotFoundError
from tuneloop.platform.hub import is_hub_id
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Version

ADAPTER_CONFIG = "adapter_config.json"

METHOD_BY_PEFT_TYPE: dict[str, str] = {
    "LORA": "lora",
    "PROMPT_TUNING": "prompt_tuning",
    "P_TUNING": "p_tuning",
    "PREFIX_TUNING": "prefix_tuning",
    "IA3": "ia3",
    "BOTTLENECK": "adapter",
}
"""`peft_type` of an adapter_config.json -> the method it is registered as by `adapters import`."""


@dataclass(frozen=True)
class AdapterFolder:
    """What `inspect_adapter` found in a PEFT adapter folder."""

    path: Path
    peft_type: str
    method: str
    serving: Serving
    declared_base: str | None
    rank: int | None
    config: dict[str, Any]


def inspect_adapter(path: Path) -> AdapterFolder:
    """Read and check a PEFT adapter folder: its config, a known PEFT type, safetensors weights only."""
    if not path.is_dir():
        raise NotFoundError(f"{path} is not a folder (expected a PEFT adapter folder)")
    pickled = sorted(p.name for p in path.rglob("*") if p.suffix in REFUSED_SUFFIXES)
    if pickled:
        raise ArtifactError(
            f"{path} holds pickle-format weights ({', '.join(pickled)}); only safetensors are accepted: "
            "re-save with `save_pretrained(..., safe_serialization=True)`"
        )
    if not any(path.glob("*.safetensors")):
        raise ArtifactError(f"{path} has no .safetensors weights (expected adapter_model.safetensors)")
    config = read_adapter_config(path)
    peft_type = str(config.get("peft_type", ""))
    method = METHOD_BY_PEFT_TYPE.get(peft_type)
    if method is None:
        raise ArtifactError(
            f"{path} is a {peft_type or 'untyped'} adapter; tuneloop imports "
            f"{', '.join(sorted(METHOD_BY_PEFT_TYPE))}"
        )
    rank = lora_rank(config, path / ADAPTER_CONFIG) if peft_type == "LORA" else None
    base = config.get("base_model_name_or_path")
    return AdapterFolder(
        path=path,
        peft_type=peft_type,
        method=method,
        serving=SERVING_BY_METHOD[method],
        declared_base=str(base) if base else None,
        rank=rank,
        config=config,
    )


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The JSON object in `folder`/adapter_config.json; an ArtifactError naming the file when it is
    missing, unreadable, not JSON or not an object (a stored version's as much as an import's)."""
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {ADAPTER_CONFIG}: not a PEFT adapter folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {type(config).__name__}")
    return config


def lora_rank(config: dict[str, Any], where: Path | str) -> int:
    """The highest LoRA rank of a LoRA adapter_config (`r` and every `rank_pattern` value), checked:
    whole numbers of at least 1, or an ArtifactError naming the field and the file `where`."""
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise ArtifactError(f"{where}: rank_pattern must be an object of module -> rank, got {pattern!r}")
    ranks = {"r": config.get("r"), **{f"rank_pattern.{k}": v for k, v in pattern.items()}}
    for field, value in ranks.items():
        if value is None and field == "r":
            raise ArtifactError(f"{where}: a LoRA adapter_config.json needs `r` (the LoRA rank)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArtifactError(f"{where}: {field} must be a whole number of at least 1, got {value!r}")
    return max(int(v) for v in ranks.values())


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from a safetensors header alone (8-byte length, then JSON)."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ArtifactError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 2**20:
            raise ArtifactError(f"{path} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(f"{path} is not a safetensors file (unreadable header)") from None
    return {name: list(meta["shape"]) for name, meta in header.items() if name != "__metadata__"}


def check_lora_fits(adapter: Path, base_dir: Path) -> None:
    """Every LoRA pair must target a weight of the base model with matching in/out sizes."""
    base: dict[str, list[int]] = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        base.update(safetensors_shapes(file))
    problems: list[str] = []
    for file in sorted(adapter.glob("*.safetensors")):
        for name, shape in safetensors_shapes(file).items():
            if ".lora_A." not in name and ".lora_B." not in name:
                continue
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            target = base.get(f"{module}.weight")
            if target is None:
                problems.append(f"{module} (no such weight in the base model)")
            elif len(target) != 2 or len(shape) != 2:
                problems.append(f"{module} (not a linear layer)")
            elif ".lora_A." in name and shape[1] != target[1]:
                problems.append(f"{module} (input size {shape[1]}, base has {target[1]})")
            elif ".lora_B." in name and shape[0] != target[0]:
                problems.append(f"{module} (output size {shape[0]}, base has {target[0]})")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ConflictError(f"{adapter} does not fit base model {base_dir}: {shown}")


def engine_lora_targets() -> tuple[str, ...] | None:
    """The `--lora-target-modules` serving engines run with (settings), or None when unrestricted.

    Replicas restrict LoRA to these modules only while prompt-embeddings serving is on
    (serve/prompt_embeds/engine.py says why), so the same settings decide what is refused here.
    """
    from tuneloop.platform import settings

    if not settings.TUNELOOP_PROMPT_EMBEDS.get():
        return None
    return settings.TUNELOOP_LORA_TARGET_MODULES.get()


def lora_target_modules(adapter: Path) -> set[str]:
    """Short names of the modules an adapter's LoRA weights touch (`q_proj`, `embed_tokens`, ...).

    Read from the safetensors headers, not from `target_modules` in the config, which may be a regex
    or "all-linear": the weights are what vLLM would load. Whole-module copies (peft's
    `modules_to_save`) count as touched too.
    """
    touched: set[str] = set()
    for file in sorted(adapter.glob("*.safetensors")):
        for name in safetensors_shapes(file):
            module = name.split(".lora_")[0] if ".lora_" in name else name.rsplit(".", 1)[0]
            touched.add(module.removesuffix(".modules_to_save.default").rsplit(".", 1)[-1])
    return touched


def check_lora_targets(adapter: Path, allowed: Sequence[str] | None) -> None:
    """Refuse a LoRA adapter with weights on modules outside the engine's `--lora-target-modules`.

    vLLM loads such an adapter without a word and skips those weights, so it would serve a model
    that is not the one trained. `allowed` None means the engine is not restricted.
    """
    if allowed is None:
        return
    outside = sorted(lora_target_modules(adapter) - set(allowed))
    if outside:
        raise ConfigError(
            f"{adapter} has LoRA weights on {', '.join(outside)}, outside the modules the engine applies "
            f"LoRA to ({', '.join(allowed)}; TUNELOOP_LORA_TARGET_MODULES). vLLM would silently ignore "
            "them and serve a different model than the one trained: retrain with target_modules within "
            "that list, or widen TUNELOOP_LORA_TARGET_MODULES on every replica (never to the embedding "
            "layer while TUNELOOP_PROMPT_EMBEDS is on)"
        )


def import_adapter(
    alias: str,
    path: Path,
    *,
    registry: Registry,
    store: ArtifactStore,
    max_lora_rank: int,
    base_model: str | None = None,
    lora_target_modules: Sequence[str] | None = None,
) -> Version:
    """Validate the PEFT adapter folder `path` and register it as the next version of adapter `alias`.

    `lora_target_modules`: the engine's `--lora-target-modules` (None: unrestricted).
    """
    if not alias or "@" in alias or "/" in alias:
        raise ConfigError(f"{alias!r} is not a valid adapter name (no '@' or '/')")
    found = inspect_adapter(path)
    wanted = base_model or found.declared_base
    if not wanted:
        raise ConfigError(f"{path / ADAPTER_CONFIG} names no base model; pass --base-model")
    try:
        base_dir = resolve_model(wanted)
    except NotFoundError as exc:
        raise NotFoundError(
            f"{exc}; pass --base-model with the folder, name or id the replica serves"
        ) from None
    # A hub id stays the name (its cache folder differs per machine); a folder is recorded resolved.
    base_ref = wanted if is_hub_id(wanted) else str(base_dir)
    existing = _existing_base(registry, alias)
    if existing is not None:
        if not same_base_model(existing, base_ref):
            raise ConflictError(f"adapter {alias!r} is on base {existing!r}, not {base_ref!r}")
        base_ref = existing
    if found.rank is not None and found.rank > max_lora_rank:
        raise ConfigError(
            f"{path} has LoRA rank {found.rank}, above the engine's limit {max_lora_rank} "
            "(TUNELOOP_MAX_LORA_RANK); retrain with a lower rank or raise the limit"
        )
    if found.peft_type == "LORA":
        check_lora_fits(path, base_dir)
        check_lora_targets(path, lora_target_modules)

    stored: list[int] = []

    def put(number: int) -> str:
        manifest = Manifest(
            adapter=alias,
            version=number,
            base_model=base_ref,
            method=found.method,
            serving=found.serving,
            created_at=datetime.now(UTC),
        )
        # reclaim: add_version just chose `number`, so no row refers to a folder already stored there.
        uri = store.put(path, manifest, reclaim=True)
        stored.append(number)
        return uri

    summary = {"serving": found.serving, "method": found.method, "base_model": base_ref}
    try:
        return registry.add_version(
            alias,
            base_model=base_ref,
            method=found.method,
            store=put,
            manifest={**summary, "imported_from": str(path)},
        )
    except BaseException:
        # No row was written: the stored copy would make this version number fail forever
        # ("versions are immutable"), so it goes too.
        for number in stored:
            store.remove(alias, number)
        raise


def _existing_base(registry: Registry, adapter: str) -> str | None:
    try:
        versions = registry.list_versions(adapter)
    except NotFoundError:
        return None
    return versions[0].adapter.base_model
