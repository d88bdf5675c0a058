"""The few collectives the training loop needs, which are no-ops on a single worker.

Every worker must take the same decisions at the same step (report now? stop now?), or one would
wait forever in a collective the others never enter. Values that decide are therefore computed
once and shared: sums are all-reduced, rank 0's verdicts are broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over all workers (float64; the values themselves on one worker)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag`, on every worker."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_device())
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def _device() -> str:
    import torch
    import torch.distributed as dist

    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
