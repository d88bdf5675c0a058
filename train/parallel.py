"""How the workers of a run share the model: `scaling.strategy` ddp (a replica each) or fsdp (sharded).

- **ddp**: Ray Train's `prepare_model` wraps the model in DistributedDataParallel; every worker holds
  all weights and the gradients are averaged.
- **fsdp**: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every decoder block and then on the
  whole module, over the process group Ray Train set up (gloo on CPUs, NCCL on GPUs). Each worker
  holds 1/N of every weight, gradient and optimizer state; a block's weights are gathered just for
  its forward and backward. Parameters become DTensors under their original names, so checkpoints
  gather them into full tensors (`state.trainable_snapshot`) and hold exactly what a DDP run's
  hold, and the published adapter is the same PEFT folder.

Under fsdp every forward pass is a collective: the loop runs validation the same number of times on
every worker, and gathers checkpoint state on all of them (rank 0 writes it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from tuneloop.train.step import decoder_blocks

if TYPE_CHECKING:
    import torch

Strategy = Literal["ddp", "fsdp"]


def wrap(module: torch.nn.Module, model: torch.nn.Module, strategy: Strategy) -> torch.nn.Module:
    """`module` (the model with its loss) ready for data-parallel training; itself on one worker."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return module  # a single process without a group (the benchmark): nothing to share
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in decoder_blocks(model):
            fully_shard(block)
        fully_shard(module)  # the rest: embeddings, final norm, head
        return module
    import ray.train.torch

    # Parameters are already on the worker's device (the method loaded them there).
    return ray.train.torch.prepare_model(
        module, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": False}
    )


def optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, *, keep: bool
) -> dict[str, Any]:
    """The optimizer's state to checkpoint, whole (keyed by parameter name under fsdp); {} where not
    `keep`. Under fsdp every worker must call it (the shards are gathered)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(module, optimizer, options=options)
        return dict(state) if keep else {}
    return optimizer.state_dict() if keep else {}


def load_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Restore what `optimizer_state` saved (every worker reads the same whole state; fsdp shards it)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)
