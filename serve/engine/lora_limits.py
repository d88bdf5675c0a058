"""The engine's LoRA limits, derived at start from what the registry holds for this base model.

vLLM fixes three LoRA limits when the engine starts, and each costs something when set too high
or too low:

- `--max-lora-rank`: every adapter's weights are padded to it, so a rank-64 limit makes rank-8
  adapters compute (and hold memory) as rank 64; an adapter above it cannot load at all.
- `--max-loras`: distinct adapters in one batch. Requests for more wait for a slot, so 16 adapters
  in use behind a limit of 4 run a quarter at a time; each slot reserves buffers at the max rank.
- `--max-cpu-loras`: adapters kept in the engine's CPU cache; beyond it vLLM reloads from disk.

So rather than fixed defaults, the replica reads the registry: the highest LoRA rank among the
versions it could serve (padded to the next size vLLM accepts, at most TUNELOOP_MAX_LORA_RANK,
which `adapters import` already enforces), one batch slot per adapter with such a version (at
least 2, at most the engine's batch size), and a CPU cache for every such version (at most
TUNELOOP_MAX_RESIDENT_ADAPTERS, the gateway's own residency limit). TUNELOOP_ENGINE_LORA_RANK and
TUNELOOP_ENGINE_MAX_LORAS set either by hand. The limits are read once: an adapter published
later with a higher rank than the engine's is refused with a 400 naming both ranks until the
replica restarts (the log says so at start).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from tuneloop.platform.adapters import lora_rank
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.basemodels import same_base_model
from tuneloop.platform.errors import TuneloopError
from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The `--max-lora-rank` values vLLM accepts (besides 1), smallest first."""
SKIPPED_STATUSES = ("rejected",)
MIN_MAX_LORAS = 2
"""The fewest batch slots a derived limit gives (see `derive_limits`)."""


@dataclass(frozen=True)
class LoraLimits:
    max_rank: int
    max_loras: int
    max_cpu_loras: int
    versions: int
    """LoRA versions on this base the registry holds (what the limits were derived from)."""


def padded_rank(rank: int, ceiling: int) -> int:
    """The smallest rank vLLM accepts that holds `rank`, never above `ceiling` (itself one of them)."""
    for size in VLLM_RANKS:
        if size >= rank:
            return min(size, ceiling)
    return ceiling


def derive_limits(
    registry: Registry,
    store: ArtifactStore,
    base_names: tuple[str, ...],
    *,
    ceiling_rank: int,
    max_resident: int,
    max_num_seqs: int,
    fixed_rank: int = 0,
    fixed_max_loras: int = 0,
) -> LoraLimits:
    """The limits for an engine serving `base_names` (blocking: registry and store reads)."""
    ranks: list[int] = []
    adapters: set[str] = set()
    ours: dict[str, bool] = {}
    for version in registry.list_versions():
        if str(version.status) in SKIPPED_STATUSES:
            continue
        base = version.adapter.base_model
        if base not in ours:
            ours[base] = any(same_base_model(base, name) for name in base_names)
        if not ours[base]:
            continue
        rank = _stored_rank(store, version.adapter.name, version.number)
        if rank is None:  # not a LoRA (a soft prompt, a full fine-tune), or unreadable
            continue
        ranks.append(rank)
        adapters.add(version.adapter.name)
    highest = max(ranks, default=VLLM_RANKS[0])
    max_rank = fixed_rank or padded_rank(highest, ceiling_rank)
    if highest > max_rank:
        log.warning(
            "stored LoRA rank %d is above the engine's rank %d: such versions are refused", highest, max_rank
        )
    # Never one slot: on vLLM's CPU backend a batch that mixes a LoRA request with a prompt-embeddings
    # request gives the latter wrong tokens when --max-loras is 1 (2 and 4 are right; measured with
    # tests/serve/test_gateway_prompt_tuned.py, which checks exactly that mix).
    max_loras = fixed_max_loras or max(MIN_MAX_LORAS, min(len(adapters), max_num_seqs))
    max_cpu = max(max_loras, min(len(ranks), max_resident))
    return LoraLimits(max_rank=max_rank, max_loras=max_loras, max_cpu_loras=max_cpu, versions=len(ranks))


def _stored_rank(store: ArtifactStore, adapter: str, number: int) -> int | None:
    """The rank in a stored version's adapter_config.json; None when it is unreadable (the gateway
    refuses such a version when it is asked for, with the reason)."""
    where = f"{adapter}@{number}/adapter_config.json"
    try:
        with store.fs.open(f"{store.path(adapter, number)}/adapter_config.json") as fh:
            config = json.load(fh)
        if config.get("peft_type") != "LORA":
            return None
        return lora_rank(config, where)
    except (OSError, ValueError, TuneloopError, AttributeError) as exc:
        log.warning("cannot read the LoRA rank of %s: %s", where, exc)
        return None
