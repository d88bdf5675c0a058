from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pytest
from pydantic import ValidationError

from tuneloop.platform.artifacts import MANIFEST, STALE_AFTER_S, ArtifactStore, Manifest
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


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../other/v1/x.json", "a/../../x.json", "./a.json", "a//b.json", ""]
)
def test_manifest_paths_must_be_plain_relative_paths(store: ArtifactStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValidationError, match="not a plain relative path"):
        Manifest.model_validate({**_manifest().model_dump(), "files": {bad: "0" * 64}})
    # A manifest written by someone else into the store is refused when read, and so nothing is fetched.
    store.put(_adapter(tmp_path / "src"), _manifest())
    path = f"{store.path('support', 1)}/{MANIFEST}"
    with store.fs.open(path) as fh:
        raw = json.load(fh)
    raw["files"][bad] = "0" * 64
    with store.fs.open(path, "w") as fh:
        fh.write(json.dumps(raw))
    with pytest.raises(ArtifactError, match="not a plain relative path"):
        store.fetch("support", 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_symlink_out_of_the_version_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "s3cr3t"}')
    # Importing a folder whose file links outside it copies nothing.
    src = _adapter(tmp_path / "src")
    (src / "extra.json").symlink_to(secret)
    with pytest.raises(ArtifactError, match=r"symlinks to files outside it \(extra.json\)"):
        store.put(src, _manifest())
    (src / "extra.json").unlink()
    # A stored version whose listed file became a link outside it is refused when read.
    store.put(src, _manifest())
    stored = Path(store.path("support", 1))
    (stored / "adapter_config.json").unlink()
    (stored / "adapter_config.json").symlink_to(secret)
    with pytest.raises(ArtifactError, match=r"resolve outside it through a symlink: adapter_config\.json"):
        store.fetch("support", 1, tmp_path / "out")


def test_stale_partial_folders_are_swept_and_fresh_ones_kept(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    base = Path(store.root) / "adapters" / "support"
    old = base / f"v1.partial-{int(time.time() - STALE_AFTER_S - 60)}-deadbeef"
    fresh = base / f"v2.partial-{int(time.time())}-cafecafe"
    legacy = base / "v3.partial-0a1b2c3d"  # the older naming, no time in it: aged by its mtime
    for folder in (old, fresh, legacy):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"\x00")
    past = time.time() - STALE_AFTER_S - 60
    os.utime(legacy, (past, past))
    os.utime(legacy / "adapter_model.safetensors", (past, past))
    store.put(_adapter(tmp_path / "src"), _manifest())  # any put of the adapter sweeps its leftovers
    assert sorted(p.name for p in base.iterdir()) == ["v1", fresh.name]


def test_an_unregistered_version_blocks_its_number_only_while_it_may_be_in_flight(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    src = _adapter(tmp_path / "src")
    store.put(src, _manifest())  # a publish killed before its registry row was written
    with pytest.raises(ConflictError, match="immutable"):
        store.put(src, _manifest(), reclaim=True)  # could be a publish that is about to commit
    manifest = Path(store.path("support", 1)) / MANIFEST
    past = time.time() - STALE_AFTER_S - 60
    os.utime(manifest, (past, past))
    with pytest.raises(ConflictError, match="immutable"):
        store.put(src, _manifest())  # without reclaim the caller does not know that no row refers to it
    assert store.put(src, _manifest(), reclaim=True).endswith("/v1")
    assert store.manifest("support", 1).version == 1
    store.remove("support", 1)
    with pytest.raises(NotFoundError):
        store.manifest("support", 1)


def test_s3_urls_open_with_the_pinned_driver() -> None:
    # s3fs is part of the tested set (the `s3` extra) so that the image's driver is the pinned one;
    # opening a store makes no request, so this needs no bucket.
    store = ArtifactStore("s3://team-bucket/tuneloop")
    assert (
        "s3" in store.fs.protocol
        and store.uri("support", 1) == "s3://team-bucket/tuneloop/adapters/support/v1"
    )
