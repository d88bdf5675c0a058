"""The artifact store: immutable, versioned folders of weights plus a manifest, on any fsspec filesystem.

A version lives at `<root>/adapters/<name>/v<number>/` and holds safetensors weights, their JSON
configs and `tuneloop.json`, a schema-versioned manifest listing every file with its SHA-256. The
manifest is written last and a reader checks every listed file, so a copy cut short is never taken
for a version. Pickle formats (.bin, .pt, ...) are refused both ways: loading one can run code.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import BaseModel, Field, ValidationError

from tuneloop.platform import settings
from tuneloop.platform.errors import ArtifactError, ConflictError, NotFoundError

MANIFEST = "tuneloop.json"
ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

Serving = Literal["lora", "prompt_embeddings", "engine", "none"]


class Manifest(BaseModel):
    """What a stored version is, where it came from, and how it can be served."""

    schema_version: Literal[1] = Field(1, description="Version of this manifest's schema.")
    adapter: str = Field(description="Adapter name the version belongs to.")
    version: int = Field(ge=1, description="Version number assigned by the registry.")
    base_model: str = Field(description="Base model as the serving engine names it.")
    method: str = Field(description="Fine-tuning method, e.g. lora, qlora, prompt_tuning, full.")
    serving: Serving = Field(description="How the version is served (DESIGN.md's method table).")
    task: str | None = Field(None, description="sft or uft.")
    data_hash: str | None = Field(None, description="Hash of the training data.")
    job_id: str | None = Field(None, description="Ray job that produced it, if any.")
    parent: str | None = Field(None, description="Version it was retrained from, as adapter@N.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Test-set metrics at publish time.")
    created_at: datetime = Field(description="When the version was stored (UTC).")
    files: dict[str, str] = Field(default_factory=dict, description="Relative path -> SHA-256 of every file.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Versioned artifact folders under one root URL (default: TUNELOOP_ARTIFACTS)."""

    def __init__(self, root: str | None = None) -> None:
        self.root_url = root or settings.TUNELOOP_ARTIFACTS.get()
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.root_url)
        except (ImportError, ValueError) as exc:
            shown, why = settings.redact_url(self.root_url), settings.redact_url(str(exc))
            raise ArtifactError(f"cannot open artifact store {shown!r}: {why}") from None

    def path(self, adapter: str, version: int) -> str:
        return f"{self.root.rstrip('/')}/adapters/{adapter}/v{version}"

    def uri(self, adapter: str, version: int) -> str:
        return self.fs.unstrip_protocol(self.path(adapter, version))

    def put(self, source: Path, manifest: Manifest) -> str:
        """Store the files of `source` as `manifest.adapter` version `manifest.version`; returns its URI."""
        files = _collect(source)
        final = self.path(manifest.adapter, manifest.version)
        if self.fs.exists(final):
            raise ConflictError(
                f"{self.uri(manifest.adapter, manifest.version)} exists; versions are immutable"
            )
        manifest = manifest.model_copy(update={"files": {rel: sha256(source / rel) for rel in files}})
        staging = f"{final}.partial-{uuid.uuid4().hex[:8]}"
        try:
            for rel in files:
                target = f"{staging}/{rel}"
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(source / rel), target)
            with self.fs.open(f"{staging}/{MANIFEST}", "w") as fh:
                fh.write(manifest.model_dump_json(indent=2))
            self.fs.mv(staging, final, recursive=True)
        except BaseException:
            if self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)
            raise
        return self.uri(manifest.adapter, manifest.version)

    def manifest(self, adapter: str, version: int) -> Manifest:
        """The manifest of a complete version; an incomplete or foreign folder is an error."""
        base = self.path(adapter, version)
        try:
            with self.fs.open(f"{base}/{MANIFEST}") as fh:
                manifest = Manifest.model_validate(json.load(fh))
        except FileNotFoundError:
            raise NotFoundError(f"no stored version at {self.uri(adapter, version)}") from None
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"bad manifest in {self.uri(adapter, version)}: {exc}") from None
        missing = [rel for rel in manifest.files if not self.fs.exists(f"{base}/{rel}")]
        if missing:
            raise ArtifactError(f"{self.uri(adapter, version)} is incomplete: missing {', '.join(missing)}")
        return manifest

    def fetch(self, adapter: str, version: int, dest: Path) -> Path:
        """Copy a version into the local folder `dest`, checking every file's SHA-256."""
        manifest = self.manifest(adapter, version)
        base = self.path(adapter, version)
        dest.mkdir(parents=True, exist_ok=True)
        for rel, digest in manifest.files.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{base}/{rel}", str(target))
            if sha256(target) != digest:
                target.unlink()
                raise ArtifactError(f"{rel} of {adapter}@{version} does not match its manifest checksum")
        (dest / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        return dest


def _collect(source: Path) -> list[str]:
    """The files of `source` to store, refusing anything but safetensors and plain-text configs."""
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a folder")
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    refused = [f for f in files if f.endswith(REFUSED_SUFFIXES)]
    if refused:
        raise ArtifactError(
            f"{source} holds pickle-format weights ({', '.join(refused)}): save with safetensors instead"
        )
    files = [f for f in files if f.endswith(ALLOWED_SUFFIXES) and Path(f).name != MANIFEST]
    if not any(f.endswith(".safetensors") for f in files):
        raise ArtifactError(f"{source} has no .safetensors weights")
    return files
