"""The engine's LoRA limits come from what the registry holds (real SQLite registry and artifact store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.gateway import state_env
from helpers.tiny_model import build_random_lora

from tuneloop.platform.adapters import import_adapter
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import VersionStatus
from tuneloop.serve.config import engine_lora_limits
from tuneloop.serve.engine.launch import EngineConfig, engine_argv
from tuneloop.serve.engine.lora_limits import derive_limits, padded_rank
from tuneloop.serve.routing.resolver import BaseModel


def test_ranks_are_padded_to_what_vllm_accepts_within_the_ceiling() -> None:
    assert [padded_rank(r, 64) for r in (1, 8, 9, 16, 17, 40, 64)] == [8, 8, 16, 16, 32, 64, 64]
    assert padded_rank(40, 32) == 32  # never above the ceiling (import refuses such adapters anyway)


@pytest.fixture
def stored(tiny_model_dir: Path, tmp_path: Path) -> tuple[Registry, ArtifactStore]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    store = ArtifactStore(str(tmp_path / "artifacts"))
    for name, rank in (("a", 8), ("a", 32), ("b", 8), ("c", 16)):
        folder = build_random_lora(tiny_model_dir, tmp_path / f"{name}{rank}", rank=rank, seed=rank)
        import_adapter(name, folder, registry=registry, store=store, max_lora_rank=64)
    return registry, store


def test_limits_follow_the_stored_versions(
    stored: tuple[Registry, ArtifactStore], tiny_model_dir: Path
) -> None:
    registry, store = stored
    base = (str(tiny_model_dir),)
    limits = derive_limits(registry, store, base, ceiling_rank=64, max_resident=16, max_num_seqs=16)
    # Highest rank 32; one batch slot per adapter (a, b, c); every version cached on the CPU.
    assert (limits.max_rank, limits.max_loras, limits.max_cpu_loras, limits.versions) == (32, 3, 4, 4)
    registry.set_status("a@2", VersionStatus.REJECTED)  # never served: does not count
    limits = derive_limits(registry, store, base, ceiling_rank=64, max_resident=2, max_num_seqs=2)
    assert (limits.max_rank, limits.max_loras, limits.max_cpu_loras) == (16, 2, 2)
    other = derive_limits(registry, store, ("/elsewhere",), ceiling_rank=64, max_resident=16, max_num_seqs=16)
    assert (other.max_rank, other.max_loras, other.versions) == (8, 2, 0)  # nothing there: the floor of 2
    fixed = derive_limits(
        registry,
        store,
        base,
        ceiling_rank=64,
        max_resident=16,
        max_num_seqs=16,
        fixed_rank=64,
        fixed_max_loras=8,
    )
    assert (fixed.max_rank, fixed.max_loras) == (64, 8)


def test_the_replica_config_and_engine_command_line_use_them(
    stored: tuple[Registry, ArtifactStore],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in state_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TUNELOOP_MAX_LORA_RANK", "64")
    limits = engine_lora_limits(BaseModel(public=str(tiny_model_dir), engine=str(tiny_model_dir)))
    assert (limits.max_rank, limits.max_loras, limits.max_cpu_loras) == (32, 3, 4)
    config = EngineConfig(
        model="m", port=1, max_lora_rank=limits.max_rank, max_loras=limits.max_loras, max_cpu_loras=4
    )
    argv = engine_argv(config)
    assert argv[argv.index("--max-lora-rank") + 1] == "32" and argv[argv.index("--max-loras") + 1] == "3"
