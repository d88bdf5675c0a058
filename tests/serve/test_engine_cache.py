"""The engine's local copies (serve/engine/cache.py): checked against the store before each reuse.

Real files on disk and a real local artifact store; tampering is done the way a bad disk or a person
with shell access would do it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tuneloop.platform.artifacts import MANIFEST, STALE_AFTER_S, ArtifactStore, Manifest
from tuneloop.platform.errors import ArtifactError
from tuneloop.serve.engine.cache import local_copy

WEIGHTS = b"\x07" * 128


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(WEIGHTS)
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = Manifest(
        adapter="support",
        version=1,
        base_model="/m",
        method="lora",
        serving="lora",
        created_at=datetime.now(UTC),
    )
    store.put(src, manifest)
    return store


def test_an_intact_copy_is_reused(store: ArtifactStore, tmp_path: Path) -> None:
    first = local_copy(store, "support", 1, tmp_path / "cache")
    stamp = (first / "adapter_model.safetensors").stat().st_mtime_ns
    again = local_copy(store, "support", 1, tmp_path / "cache")
    assert again == first and (again / "adapter_model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["changed", "missing", "extra", "symlink"])
def test_a_damaged_copy_is_fetched_again_before_serving(
    store: ArtifactStore, tmp_path: Path, damage: str
) -> None:
    copy = local_copy(store, "support", 1, tmp_path / "cache")
    weights = copy / "adapter_model.safetensors"
    if damage == "changed":
        weights.write_bytes(b"\x00" * 128)
    elif damage == "missing":
        weights.unlink()
    elif damage == "extra":
        (copy / "extra.json").write_text("{}")
    else:
        outside = tmp_path / "elsewhere.safetensors"
        outside.write_bytes(WEIGHTS)  # same bytes: only the link itself is wrong
        weights.unlink()
        weights.symlink_to(outside)
    again = local_copy(store, "support", 1, tmp_path / "cache")
    assert not weights.is_symlink() and weights.read_bytes() == WEIGHTS
    assert sorted(p.name for p in again.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        MANIFEST,
    ]


def test_a_copy_the_store_no_longer_vouches_for_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    local_copy(store, "support", 1, tmp_path / "cache")
    stored = Path(store.path("support", 1)) / "adapter_model.safetensors"
    stored.write_bytes(b"\x01" * 128)  # the store's own file no longer matches its manifest
    (tmp_path / "cache" / "support" / "v1" / "adapter_model.safetensors").write_bytes(b"\x01" * 128)
    with pytest.raises(ArtifactError, match="checksum"):
        local_copy(store, "support", 1, tmp_path / "cache")


def test_stale_temporary_folders_are_swept(store: ArtifactStore, tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "support"
    old, fresh = folder / ".v1.partial-old", folder / ".v1.partial-new"
    for path in (old, fresh):
        path.mkdir(parents=True)
    past = time.time() - STALE_AFTER_S - 60
    os.utime(old, (past, past))
    local_copy(store, "support", 1, tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name, "v1"]
