"""Local copies of stored versions, for the engine to load from its own disk.

vLLM loads adapters (and models) from local paths only, and the gateway must never hand it a path
a client chose: every path it passes is made here, under TUNELOOP_CACHE_DIR, from the artifact store
(checksummed by `ArtifactStore.fetch`). A copy is written to a sibling temporary folder and renamed
into place, so a folder under its final name is always complete; versions are immutable, so a
complete copy is reused as it is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tuneloop.platform.artifacts import MANIFEST, ArtifactStore
from tuneloop.platform.errors import ArtifactError

# What may sit beside the weights in a folder handed to vLLM; anything else (pickles above all) is refused.
SERVABLE_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")


def local_copy(store: ArtifactStore, adapter: str, number: int, root: Path) -> Path:
    """`root/<adapter>/v<number>/`, fetched from `store` unless a complete copy is already there."""
    dest = root / adapter / f"v{number}"
    if (dest / MANIFEST).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
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
