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
    """The optimizer's state to checkpoint, whole: `optimizer.state_dict()`, with every sharded
    tensor gathered under fsdp (a collective: every worker calls it); {} where not `keep`.

    The same layout as a DDP run's (state by parameter index), whatever the strategy. (torch's
    `get_optimizer_state_dict` fails on tied weights, a Llama's embedding and head.)
    """
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()
    if isinstance(module, _fsdp_module()):
        state["state"] = {
            index: {
                key: value.full_tensor() if isinstance(value, DTensor) else value
                for key, value in entry.items()
            }
            for index, entry in state["state"].items()
        }
    return state if keep else {}


def load_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Restore what `optimizer_state` saved; under fsdp each worker keeps its own shard of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(module, _fsdp_module()):
        params = [param for group in optimizer.param_groups for param in group["params"]]
        for index, entry in state["state"].items():
            param = params[index]
            for key, value in entry.items():
                if isinstance(param, DTensor) and value.shape == param.shape:
                    # Every worker read the same whole tensor: take the local shard, no communication.
                    entry[key] = distribute_tensor(
                        value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                    )
    optimizer.load_state_dict(state)


def _fsdp_module() -> type:
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule
