"""Batches for the loop and for scoring: each worker's shard, resumable mid-epoch, and loss sums.

Training batches come from a `DistributedSampler` (shuffled per epoch with the job's seed, padded so
every worker gets the same number of batches, which DDP needs). The stream of micro-batches runs
across epochs and can start at any position, which is how a resumed run continues with exactly
the batches the failed one had not seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from tuneloop.train.tokenize import IGNORE_INDEX, Encoded, collate

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader


def shard_loader(
    inputs: Sequence[Encoded], *, batch_size: int, rank: int, world: int, seed: int, pad_id: int
) -> DataLoader[dict[str, torch.Tensor]]:
    """This worker's shuffled share of `inputs`, in batches of `batch_size`."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(inputs, num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[var-annotated,arg-type]
    return DataLoader(
        inputs,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=partial(collate, pad_id=pad_id),
    )


def micro_batches(
    loader: DataLoader[dict[str, torch.Tensor]], start: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches over epochs, beginning with micro-batch number `start` (0 = the first)."""
    from torch.utils.data import DistributedSampler

    epoch, skip = divmod(start, len(loader))
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def scored_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss: transformers shifts labels by one, so the first position never does."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def loss_sums(
    model: torch.nn.Module,
    inputs: Sequence[Encoded],
    *,
    batch_size: int,
    pad_id: int,
    device: str | torch.device,
) -> tuple[float, int]:
    """(summed token loss, scored tokens) of `inputs`: the token-weighted mean is their quotient.

    Works for every method, soft prompts included: it reads the model's own `.loss` (the mean over
    the batch's scored tokens) and weights it by the count, rather than re-deriving it from logits
    that may carry virtual-token positions.
    """
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad(), autocast(device):
            for start in range(0, len(inputs), batch_size):
                batch = collate(inputs[start : start + batch_size], pad_id)
                n = scored_tokens(batch["labels"])
                if n == 0:
                    continue
                out = model(**{key: value.to(device) for key, value in batch.items()})
                total += float(out.loss) * n
                count += n
    finally:
        model.train(was_training)
    return total, count


def autocast(device: str | torch.device) -> torch.autocast:
    """bf16 autocast on a GPU (weights stay in the dtype they were loaded in); off on a CPU."""
    import torch

    kind = torch.device(device).type
    # bf16 compute on GPUs (weights stay as loaded); plain fp32 on CPUs.
    return torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=kind == "cuda")
