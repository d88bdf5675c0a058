"""A Hugging Face hub cache laid out on disk, as `huggingface_hub` writes it, holding a local model.

No hub can be reached here, so tests put the tiny model where a download would have put it:
`HF_HOME/hub/models--ORG--NAME/` (or `datasets--ORG--NAME/`) with `blobs/<sha256>` (the files),
`snapshots/<commit>/<file>` (relative links to the blobs) and `refs/main` (the commit).
huggingface_hub, transformers and vLLM then find it by id with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def lay_out_hub_cache(
    hf_home: Path, repo_id: str, model_dir: Path, *, ref: str = "main", repo_type: str = "model"
) -> str:
    """Put every file of `model_dir` into the cache as repository `repo_id` (a model, or with
    repo_type="dataset" a dataset); return the commit hash."""
    repo = hf_home / "hub" / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    commit = hashlib.sha1(b"".join(p.name.encode() + p.read_bytes()[:4096] for p in files)).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in files:
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.name
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit
