"""What a training checkpoint holds, and how the recipe writes and reads one.

A checkpoint is a folder that Ray Train copies to the run's storage:

- `weights.safetensors`: the trainable parameters now, by their names in the (unwrapped) model, so
  the same code serves every method: LoRA factors, soft prompts, chosen blocks, or everything;
- `best.safetensors`: the trainable parameters at the best validation loss so far: what is published;
- `optimizer.pt`: optimizer and learning-rate schedule state (torch.save, read back with
  weights_only=True; internal to a run, never published; under fsdp gathered whole first, see
  `parallel.py`);
- `state.json`: step, micro-batches consumed, the early-stopping record, restarts, tokens seen.

Frozen weights are never written: they come back from the base model when a run resumes.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform.errors import ArtifactError
from tuneloop.platform.refs import VersionRef

if TYPE_CHECKING:
    import torch

    from tuneloop.train.methods import FineTuneMethod

WEIGHTS = "weights.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"


def staging_dir(job_id: str) -> Path:
    """Where workers on this machine write checkpoints before Ray uploads them to the run's storage.

    Ray deletes each folder after its upload, but not the ones a killed worker (a trial ASHA stops)
    was still uploading; so every run stages under its job's folder, which the driver removes when
    the job ends, and a restarted worker clears its run's leftovers first.
    """
    return Path(tempfile.gettempdir()) / "tuneloop-checkpoints" / job_id


def trainable_snapshot(model: torch.nn.Module, *, keep: bool = True) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that train (a tied weight appears once, under its first name).

    Parameters sharded by FSDP are gathered whole first: a collective, so every worker calls this,
    and those that do not `keep` the result get {} (only rank 0 writes checkpoints).
    """
    from torch.distributed.tensor import DTensor

    snapshot = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tensor = param.detach()
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        if keep:
            snapshot[name] = tensor.to("cpu", copy=True).contiguous()
    return snapshot


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into `model`; names that do not match exactly are an error."""
    import torch

    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise ArtifactError(
            f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(was it written by another method or base model?)"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(device=param.device, dtype=param.dtype))


def save_checkpoint(
    directory: Path,
    *,
    weights: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> None:
    """Write the four files into `directory` (which must exist): `weights` and `best` from
    `trainable_snapshot`, `optimizer` from `parallel.optimizer_state`."""
    import torch
    from safetensors.torch import save_file

    save_file(weights, str(directory / WEIGHTS))
    save_file(best, str(directory / BEST))
    torch.save({"optimizer": optimizer, "scheduler": scheduler.state_dict()}, directory / OPTIMIZER)
    (directory / STATE).write_text(json.dumps(state, indent=2, sort_keys=True))


@dataclass
class Saved:
    """A checkpoint read back: the recipe loads the weights before DDP/FSDP wraps the model, and the
    optimizer state after (FSDP replaces the parameters the optimizer holds)."""

    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]


def read_checkpoint(directory: Path) -> Saved:
    """Everything a checkpoint in `directory` holds, on the CPU."""
    import torch
    from safetensors.torch import load_file

    saved = torch.load(directory / OPTIMIZER, map_location="cpu", weights_only=True)
    return Saved(
        state=json.loads((directory / STATE).read_text()),
        weights=load_file(str(directory / WEIGHTS)),
        best=load_file(str(directory / BEST)),
        optimizer=saved["optimizer"],
        scheduler=saved["scheduler"],
    )


def read_state(directory: Path) -> dict[str, Any]:
    """Only `state.json` of a checkpoint (the driver reads it to choose and describe a result)."""
    try:
        state: dict[str, Any] = json.loads((directory / STATE).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{directory} is not a tuneloop training checkpoint (no {STATE})") from None
    return state


def training_summary(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's `state.json` says about the run that wrote it, as the registry records it."""
    stopper = state["stopper"]
    return {
        "steps": state["step"],
        "total_steps": state["total_steps"],
        "stopped_early": state["stopped_early"],
        "best_val_loss": stopper["best"],
        "best_step": stopper["best_step"],
        "initial_val_loss": state["initial_val_loss"],
        "val_history": stopper["history"],
        "restarts": state["restarts"],
        "resumed_from_step": state["resumed_from_step"],
        "world_size": state["world_size"],
        "tokens": state["tokens"],
    }


def warm_start(method: FineTuneMethod, model: torch.nn.Module, ref: str) -> None:
    """Load the trained weights of the stored version `ref` (`adapter@N`) into `model`: the job spec's
    `output.init_from`. Each worker fetches it from the artifact store itself (checksums checked)."""
    from tuneloop.platform.artifacts import ArtifactStore

    version = VersionRef.of(ref)
    with tempfile.TemporaryDirectory(prefix="tuneloop-init-") as tmp:
        method.warm_start(model, ArtifactStore().fetch(version.adapter, version.number, Path(tmp) / "init"))
