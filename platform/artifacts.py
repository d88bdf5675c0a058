"""The artifact store: immutable, versioned folders of weights plus a manifest, on any fsspec filesystem.

A version lives at `<root>/adapters/<name>/v<number>/` and holds safetensors weights, their JSON
configs and `tuneloop.json`, a schema-versioned manifest listing every file with its SHA-256. The
manifest is written last and a reader checks every listed file, so a copy cut short is never taken
for a version. Pickle formats (.bin, .pt, ...) are refused both ways: loading one can run code.

Nothing is ever stuck: a copy is staged in `v<number>.partial-<start time>-<random>` and renamed into
place; staging folders a killed process left are swept by the next `put` of that adapter once they
are older than `STALE_AFTER_S`, and so is a complete folder whose registry row was never written
(`put(..., reclaim=True)`, which only a caller that knows no row refers to the number may ask).
Manifest paths are relative, without `..`, and may not resolve through a symlink outside the version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import BaseModel, Field, ValidationError, field_validator

from tuneloop.platform import settings
from tuneloop.platform.errors import ArtifactError, ConflictError, NotFoundError

MANIFEST = "tuneloop.json"
ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

Serving = Literal["lora", "prompt_embeddings", "engine", "none"]

SERVING_BY_METHOD: dict[str, Serving] = {
    "lora": "lora",
    "qlora": "lora",
    "full": "engine",
    "partial": "engine",
    "prompt_tuning": "prompt_embeddings",
    "p_tuning": "prompt_embeddings",
    "prefix_tuning": "none",
    "ia3": "none",
    "adapter": "none",
}
"""How each training method's result is served (DESIGN.md, "Methods and how each is deployed"): the
one table; the method classes of train/methods take their `serving` from it."""

STALE_AFTER_S = 3600.0
"""Age after which a staging folder, or a complete folder no registry row refers to, is swept: longer
than any copy of a version takes, so a publish still in progress is never touched."""

PARTIAL = ".partial-"

log = logging.getLogger(__name__)


def check_relative_path(rel: str) -> str:
    """`rel` if it is a plain relative POSIX path inside its folder; else an ArtifactError naming it."""
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or (len(rel) > 1 and rel[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
        or posixpath.normpath(rel) != rel
    ):
        raise ArtifactError(
            f"manifest path {rel!r} is not a plain relative path inside the version "
            "(absolute, '..', '.', empty parts and backslashes are refused)"
        )
    return rel


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

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, str]) -> dict[str, str]:
        problems = []
        for rel in files:
            try:
                check_relative_path(rel)
            except ArtifactError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return files


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

    def put(self, source: Path, manifest: Manifest, *, reclaim: bool = False) -> str:
        """Store the files of `source` as `manifest.adapter` version `manifest.version`; returns its URI.

        `reclaim=True`: the caller knows that no registry row refers to this version number (it is
        inside `Registry.add_version`, which just chose it), so a complete folder already there is what
        a process killed between its copy and its row left behind; once older than `STALE_AFTER_S` it
        is removed instead of blocking the number forever.
        """
        files = _collect(source)
        self.sweep(manifest.adapter)
        final = self.path(manifest.adapter, manifest.version)
        if self.fs.exists(final) and reclaim and self._age_s(final) > STALE_AFTER_S:
            log.warning("removing %s: stored but never registered (a killed publish)", final)
            self.fs.rm(final, recursive=True)
        if self.fs.exists(final):
            raise ConflictError(
                f"{self.uri(manifest.adapter, manifest.version)} exists; versions are immutable"
            )
        manifest = manifest.model_copy(update={"files": {rel: sha256(source / rel) for rel in files}})
        staging = f"{final}{PARTIAL}{int(time.time())}-{uuid.uuid4().hex[:8]}"
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

    def remove(self, adapter: str, version: int) -> None:
        """Delete a stored version: only for one whose registry row was never written (a failed
        publish or import), so that its number can be used again."""
        final = self.path(adapter, version)
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)

    def sweep(self, adapter: str, older_than_s: float = STALE_AFTER_S) -> list[str]:
        """Remove the staging folders of `adapter` that killed processes left (older than
        `older_than_s`); returns their paths. A staging folder is never a version, so this is safe."""
        base = f"{self.root.rstrip('/')}/adapters/{adapter}"
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        removed = []
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if PARTIAL not in name:
                continue
            stamp = name.split(PARTIAL, 1)[1].split("-", 1)[0]
            age = time.time() - int(stamp) if stamp.isdigit() else self._age_s(str(entry))
            if age > older_than_s:
                log.warning("removing %s: a copy a killed process left unfinished", entry)
                self.fs.rm(str(entry), recursive=True)
                removed.append(str(entry))
        return removed

    def _age_s(self, path: str) -> float:
        """Seconds since `path` (or its manifest) last changed; 0 when the filesystem cannot say."""
        for candidate in (f"{path}/{MANIFEST}", path):
            try:
                return time.time() - self.fs.modified(candidate).timestamp()
            except (FileNotFoundError, NotImplementedError, OSError, AttributeError):
                continue
        return 0.0

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
        self._check_inside(base, manifest.files)
        missing = [rel for rel in manifest.files if not self.fs.exists(f"{base}/{rel}")]
        if missing:
            raise ArtifactError(f"{self.uri(adapter, version)} is incomplete: missing {', '.join(missing)}")
        return manifest

    def fetch(self, adapter: str, version: int, dest: Path) -> Path:
        """Copy a version into the local folder `dest`, checking every file's SHA-256."""
        manifest = self.manifest(adapter, version)
        base = self.path(adapter, version)
        dest.mkdir(parents=True, exist_ok=True)
        inside = dest.resolve()
        for rel, digest in manifest.files.items():
            target = dest / rel
            if not target.parent.resolve().is_relative_to(inside) or target.is_symlink():
                raise ArtifactError(f"{rel} of {adapter}@{version} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{base}/{rel}", str(target))
            if sha256(target) != digest:
                target.unlink()
                raise ArtifactError(f"{rel} of {adapter}@{version} does not match its manifest checksum")
        (dest / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        return dest

    def _check_inside(self, base: str, files: dict[str, str]) -> None:
        """On a local store, no listed file may resolve (through a symlink) outside its version."""
        if "file" not in _protocols(self.fs):
            return
        root = Path(base).resolve()
        outside = [rel for rel in files if not (Path(base) / rel).resolve().is_relative_to(root)]
        if outside:
            raise ArtifactError(
                f"{self.uri_of(base)} lists files that resolve outside it through a symlink: "
                f"{', '.join(outside)}; the version is refused"
            )

    def uri_of(self, path: str) -> str:
        return str(self.fs.unstrip_protocol(path))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _collect(source: Path) -> list[str]:
    """The files of `source` to store, refusing anything but safetensors and plain-text configs."""
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a folder")
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    root = source.resolve()
    outside = [f for f in files if not (source / f).resolve().is_relative_to(root)]
    if outside:
        raise ArtifactError(
            f"{source} holds symlinks to files outside it ({', '.join(outside)}): copy the files in instead"
        )
    refused = [f for f in files if f.endswith(REFUSED_SUFFIXES)]
    if refused:
        raise ArtifactError(
            f"{source} holds pickle-format weights ({', '.join(refused)}): save with safetensors instead"
        )
    files = [f for f in files if f.endswith(ALLOWED_SUFFIXES) and Path(f).name != MANIFEST]
    if not any(f.endswith(".safetensors") for f in files):
        raise ArtifactError(f"{source} has no .safetensors weights")
    return files
