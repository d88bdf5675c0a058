"""Publishing a trained result: the best weights as the method saves them, stored and registered.

`export_checkpoint` rebuilds the trained model from the base and a checkpoint's best-validation
weights and saves it the method's way: for adapters, `adapter_model.safetensors` plus
`adapter_config.json` naming the base exactly as the serving engine serves it; for full and
partial fine-tuning, a complete model folder. `publish` stores that folder with its manifest and
adds the registry version (status `candidate`) in one step: the registry runs the store inside its
transaction, so a failed store leaves no row, and if the row cannot be written after the files
were stored, the stored version is removed again. Either the version exists, complete, with its
row, or nothing does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform.artifacts import ArtifactStore, Manifest
from tuneloop.platform.spec import JobSpec
from tuneloop.train import methods
from tuneloop.train.state import BEST, load_trainable

if TYPE_CHECKING:
    from tuneloop.platform.registry import Registry
    from tuneloop.platform.registry.tables import Version

# Written beside the weights: the spec and data that made them travel with the artifact itself.
LINEAGE_FILE = "tuneloop_training.json"


def export_checkpoint(
    checkpoint_dir: Path, out_dir: Path, *, spec: JobSpec, model_dir: Path, base_ref: str
) -> None:
    """Save the best weights of a training checkpoint to `out_dir` in the method's own format."""
    import torch
    from safetensors.torch import load_file

    method = methods.get(spec.method.name)
    base = method.load_base(model_dir, spec.method, dtype=torch.float32, device="cpu")
    model = method.prepare(base, spec.method)
    load_trainable(model, load_file(str(checkpoint_dir / BEST)))
    out_dir.mkdir(parents=True, exist_ok=True)
    method.save(model, out_dir, base_ref)


def publish(
    *,
    registry: Registry,
    store: ArtifactStore,
    source_dir: Path,
    spec: JobSpec,
    base_ref: str,
    job_id: str | None,
    data_hash: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
) -> Version:
    """Store `source_dir` as the next version of the spec's adapter and register it as a candidate."""
    method = methods.get(spec.method.name)
    adapter = spec.output.adapter
    (source_dir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    created = datetime.now(UTC)
    stored: list[int] = []

    def store_version(number: int) -> str:
        manifest = Manifest(
            adapter=adapter,
            version=number,
            base_model=base_ref,
            method=spec.method.name,
            serving=method.serving,
            task=spec.task,
            data_hash=data_hash,
            job_id=job_id,
            parent=spec.output.parent,
            metrics=metrics,
            created_at=created,
        )
        # reclaim: add_version just chose `number`, so no row refers to a folder already stored there.
        uri = store.put(source_dir, manifest, reclaim=True)
        stored.append(number)
        return uri

    try:
        return registry.add_version(
            adapter,
            base_model=base_ref,
            method=spec.method.name,
            store=store_version,
            data_hash=data_hash,
            job_id=job_id,
            parent=spec.output.parent,
            metrics=metrics,
            manifest=lineage,
        )
    except BaseException:
        # The row is not there: a stored copy would block this version number for good.
        for number in stored:
            store.remove(adapter, number)
        raise
