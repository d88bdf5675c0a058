from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pytest

from tuneloop.platform.artifacts import MANIFEST, ArtifactStore, Manifest
from tuneloop.platform.errors import ArtifactError, ConflictError, NotFoundError


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "README.md").write_text("not stored")
    return folder


def _manifest(version: int = 1) -> Manifest:
    return Manifest(
        adapter="support",
        version=version,
        base_model="/models/tiny",
        method="lora",
        serving="lora",
        created_at=datetime.now(UTC),
    )


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "artifacts"))
    fsspec.filesystem("memory").store.clear()
    return ArtifactStore(f"memory://{tmp_path.name}")


def test_put_then_fetch_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.put(_adapter(tmp_path / "src"), _manifest())
    assert uri.endswith("/adapters/support/v1")
    manifest = store.manifest("support", 1)
    assert manifest.schema_version == 1
    assert set(manifest.files) == {"adapter_model.safetensors", "adapter_config.json"}
    out = store.fetch("support", 1, tmp_path / "out")
    assert (out / "adapter_model.safetensors").read_bytes() == b"\x00" * 64
    assert json.loads((out / MANIFEST).read_text())["method"] == "lora"


def test_versions_are_immutable(store: ArtifactStore, tmp_path: Path) -> None:
    src = _adapter(tmp_path / "src")
    store.put(src, _manifest())
    with pytest.raises(ConflictError, match="immutable"):
        store.put(src, _manifest())


def test_pickle_weights_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    src = _adapter(tmp_path / "src")
    (src / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ArtifactError, match="safetensors"):
        store.put(src, _manifest())
    with pytest.raises(NotFoundError):
        store.manifest("support", 1)


def test_folder_without_weights_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"no \.safetensors"):
        store.put(src, _manifest())


def test_failed_copy_leaves_nothing(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _adapter(tmp_path / "src")
    calls = {"n": 0}
    real = store.fs.put_file

    def flaky(lpath: str, rpath: str, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("connection reset")
        real(lpath, rpath, **kw)

    monkeypatch.setattr(store.fs, "put_file", flaky)
    with pytest.raises(OSError, match="connection reset"):
        store.put(src, _manifest())
    assert (
        not store.fs.exists(f"{store.root}/adapters/support")
        or store.fs.ls(f"{store.root}/adapters/support") == []
    )


def test_incomplete_version_is_detected(store: ArtifactStore, tmp_path: Path) -> None:
    store.put(_adapter(tmp_path / "src"), _manifest())
    store.fs.rm(f"{store.path('support', 1)}/adapter_model.safetensors")
    with pytest.raises(ArtifactError, match="incomplete"):
        store.manifest("support", 1)


def test_tampered_file_fails_checksum(store: ArtifactStore, tmp_path: Path) -> None:
    store.put(_adapter(tmp_path / "src"), _manifest())
    with store.fs.open(f"{store.path('support', 1)}/adapter_model.safetensors", "wb") as fh:
        fh.write(b"\x01" * 64)
    with pytest.raises(ArtifactError, match="checksum"):
        store.fetch("support", 1, tmp_path / "out")


def test_unknown_protocol_is_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match="nosuchproto"):
        ArtifactStore("nosuchproto://bucket/x")
