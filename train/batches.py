"""Batches for the loop and for scoring: each worker's shard, resumable mid-epoch, and loss sums.

Training batches come from a `DistributedSampler` (shuffled per epoch with the job's seed, padded so
every worker gets the same number of batches, which DDP needs). The stream of micro-batches runs
across epochs and can start at any position, which is how a resumed run continues with exactly
the batches the failed one had not seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from tuneloop.train.tokenize import IGNORE_INDEX, Encoded, collate

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader


def shard_loader(
    inputs: Sequence[Encoded],
    *,
    batch_size: int,
    rank: int,
    world: int,
    seed: int,
    pad_id: int,
    packed_width: int | None = None,
) -> DataLoader[dict[str, torch.Tensor]]:
    """This worker's shuffled share of `inputs`, in batches of `batch_size` examples (padded, or
    packed into rows of `packed_width` tokens)."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(inputs, num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[var-annotated,arg-type]
    return DataLoader(
        inputs,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=partial(collate_packed, pad_id=pad_id, width=packed_width)
        if packed_width
        else partial(collate, pad_id=pad_id),
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


def collate_packed(batch: Sequence[Encoded], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """Pack a micro-batch into as few rows of at most `width` tokens as first-fit (longest first) finds.

    Each example keeps its own positions (0, 1, ...), and its first label is IGNORE_INDEX, so no
    token learns to predict across a boundary; with no attention_mask, transformers reads the
    restarting position ids as sequence boundaries and masks attention per example. A row's padding
    is one more such sequence, with no loss. The loss is the padded batch's; the padding is gone.
    `tokens` carries the count of real input tokens (there is no attention mask to count).
    """
    import torch

    rows: list[list[Encoded]] = []
    used: list[int] = []  # tokens in each row
    for item in sorted(batch, key=lambda item: -len(item["input_ids"])):
        n = len(item["input_ids"])
        if n > width:
            raise ValueError(f"an example of {n} tokens does not fit a packed row of {width}")
        fit = next((r for r, full in enumerate(used) if full + n <= width), None)
        if fit is None:
            rows.append([item])
            used.append(n)
        else:
            rows[fit].append(item)
            used[fit] += n
    filled = max(used)
    input_ids = torch.full((len(rows), filled), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), filled), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), filled), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for item in row:
            n = len(item["input_ids"])
            input_ids[r, start : start + n] = torch.tensor(item["input_ids"], dtype=torch.long)
            labels[r, start + 1 : start + n] = torch.tensor(item["labels"][1:], dtype=torch.long)
            position_ids[r, start : start + n] = torch.arange(n)
            start += n
        position_ids[r, start:] = torch.arange(filled - start)
    tokens = torch.tensor(sum(len(item["input_ids"]) for item in batch))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "tokens": tokens}


def input_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) input tokens of a padded or packed batch."""
    return int(batch["tokens"] if "tokens" in batch else batch["attention_mask"].sum())


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
    batches: int | None = None,
) -> tuple[float, int]:
    """(summed token loss, scored tokens) of `inputs`: the token-weighted mean is their quotient.

    Works for every method, soft prompts included: it reads the model's own `.loss` (the mean over
    the batch's scored tokens) and weights it by the count, rather than re-deriving it from logits
    that may carry virtual-token positions. With `batches`, exactly that many forward passes run
    (a batch with nothing to score too, past the end on a filler without loss): under FSDP every
    forward is a collective, so every worker must run as many as the others.
    """
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    filler: Encoded = {"input_ids": [pad_id], "labels": [IGNORE_INDEX]}
    try:
        with torch.no_grad(), autocast(device):
            for index in range(batches if batches is not None else math.ceil(len(inputs) / batch_size)):
                chunk = inputs[index * batch_size : (index + 1) * batch_size] or [filler]
                batch = collate(chunk, pad_id)
                n = scored_tokens(batch["labels"])
                if n == 0 and batches is None:
                    continue
                out = model(**{key: value.to(device) for key, value in batch.items()})
                if n:
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
