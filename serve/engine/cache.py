"""Local copies of stored versions, for the engine to load from its own disk.

vLLM loads adapters (and models) from local paths only, and the gateway must never hand it a path
a client chose: every path it passes is made here, under TUNELOOP_CACHE_DIR, from the artifact store
(checksummed by `ArtifactStore.fetch`). A copy is written to a sibling temporary folder and renamed
into place, so a folder under its final name is always complete. Versions are immutable, but a disk
is not: before a cached copy is served again, every file is checked against the store's manifest
(SHA-256, no extra or missing file, nothing resolving outside the folder through a symlink), and a
copy that fails is fetched afresh. Temporary folders a killed gateway left are swept once stale.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from tuneloop.platform.artifacts import MANIFEST, STALE_AFTER_S, ArtifactStore, Manifest, sha256
from tuneloop.platform.errors import ArtifactError

# What may sit beside the weights in a folder handed to vLLM; anything else (pickles above all) is refused.
SERVABLE_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")


log = logging.getLogger(__name__)


def local_copy(store: ArtifactStore, adapter: str, number: int, root: Path) -> Path:
    """`root/<adapter>/v<number>/`, fetched from `store` unless a copy that still matches the store's
    manifest is already there."""
    dest = root / adapter / f"v{number}"
    if (dest / MANIFEST).is_file():
        problem = cached_copy_problem(dest, store.manifest(adapter, number))
        if problem is None:
            return dest
        log.warning("cached copy %s fails its check (%s): fetching it again", dest, problem)
        shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(dest.parent)
    work = Path(tempfile.mkdtemp(prefix=f".v{number}.partial-", dir=dest.parent))
    try:
        store.fetch(adapter, number, work)
        check_servable_files(work)
        try:
            work.rename(dest)
        except OSError:
            if not (dest / MANIFEST).is_file():  # not a concurrent fetch that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def check_servable_files(folder: Path) -> None:
    """Safetensors weights plus plain-text configs only: loading anything else could run code."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    refused = sorted(p.name for p in files if not p.name.endswith(SERVABLE_SUFFIXES))
    if refused:
        raise ArtifactError(f"{folder} holds files the engine must not load: {', '.join(refused)}")
    if not any(p.suffix == ".safetensors" for p in files):
        raise ArtifactError(f"{folder} has no .safetensors weights")


def cached_copy_problem(folder: Path, manifest: Manifest) -> str | None:
    """Why the copy in `folder` must not be served as the version `manifest` describes, or None."""
    inside = folder.resolve()
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    extra = sorted(present - set(manifest.files) - {MANIFEST})
    if extra:
        return f"files not in the manifest: {', '.join(extra)}"
    for rel, digest in manifest.files.items():
        path = folder / rel
        if not path.resolve().is_relative_to(inside):
            return f"{rel} resolves outside the folder"
        if not path.is_file():
            return f"{rel} is missing"
        if sha256(path) != digest:
            return f"{rel} does not match its checksum"
    return None


def sweep_partials(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary `.v<N>.partial-*` folders in `folder` that a killed process left."""
    removed = []
    for path in folder.glob(".v*.partial-*"):
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if age > older_than_s:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
