"""Base models by Hugging Face id (`ORG/NAME`, optionally `ORG/NAME@REVISION`), and data files of hub
datasets (`hf://datasets/ORG/NAME[@REVISION]/FILE`), through huggingface_hub.

An id resolves to a snapshot folder of the standard hub cache (`HF_HOME/hub/models--ORG--NAME/
snapshots/<commit>/`, found through `refs/<branch>` for a branch or tag): the same cache
transformers, vLLM and `huggingface-cli download` use, so a model one of them fetched is found here.
With HF_HUB_OFFLINE=1 (or where no network exists) only the cache answers; otherwise a missing id is
downloaded, weights as safetensors only (never pickled .bin files, GGUF or ONNX copies).

The id itself stays the model's name everywhere a user sees it: the registry's base model, an
adapter's `base_model_name_or_path`, `/v1/models`. Folders and names pulled with `tuneloop models
pull` are looked up first, so an existing folder named like an id wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tuneloop.platform import settings
from tuneloop.platform.errors import NotFoundError
from tuneloop.platform.output import shortened

# The hub's repository names: letters, digits, '-', '_', '.', one '/'; a revision after '@'.
HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
    r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]{0,254}))?$"
)
# What a model needs to be trained and served; everything else in a repository is left on the hub.
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def parse_hub_id(ref: str) -> tuple[str, str | None] | None:
    """(repository id, revision or None) when `ref` is shaped like a hub id, else None."""
    match = HUB_ID.match(ref)
    if match is None or ".." in ref:
        return None
    return match["repo"], match["revision"]


def is_hub_id(ref: str) -> bool:
    """Whether `ref` names a hub model: shaped like an id, and no such path exists here."""
    return parse_hub_id(ref) is not None and not Path(ref).expanduser().exists()


def hub_snapshot(ref: str, *, download: bool = True) -> Path:
    """The local snapshot folder of hub id `ref`; downloads it when allowed and not cached.

    Raises NotFoundError naming the id, the cache looked in, and what to do.
    """
    from huggingface_hub import snapshot_download

    parsed = parse_hub_id(ref)
    if parsed is None:
        raise NotFoundError(f"{ref!r} is not a Hugging Face model id (ORG/NAME or ORG/NAME@REVISION)")
    repo, revision = parsed
    offline = settings.HF_HUB_OFFLINE.get() or not download
    path = _fetched(
        f"model {ref!r}",
        lambda cache: snapshot_download(
            repo, revision=revision, cache_dir=cache, local_files_only=offline, allow_patterns=MODEL_FILES
        ),
    )
    if not (path / "config.json").is_file():
        raise NotFoundError(f"Hugging Face model {ref!r} (at {path}) has no config.json: not a model")
    return path


def hub_dataset_file(url: str) -> Path | None:
    """The cached (or downloaded) file a data path `hf://datasets/ORG/NAME[@REVISION]/FILE` names, or
    None when `url` is not such a path. The file is read like a local one (JSONL, CSV, Parquet)."""
    from huggingface_hub import hf_hub_download

    # A Path made of the URL has lost one slash ("hf:/datasets/..."); accept both spellings.
    rest = next((url[len(p) :] for p in (DATASET_PREFIX, "hf:/datasets/") if url.startswith(p)), None)
    if rest is None:
        return None
    url = DATASET_PREFIX + rest
    parts = rest.split("/", 2)
    parsed = parse_hub_id("/".join(parts[:2])) if len(parts) == 3 and parts[2] else None
    shown = shortened(url, 200)
    if parsed is None:
        raise NotFoundError(f"{shown!r} is not {DATASET_PREFIX}ORG/NAME[@REVISION]/FILE")
    file = parts[2]
    # FILE becomes a path in the cache: refuse what could name one outside the repository's snapshot.
    if len(file) > MAX_HUB_FILE or file.startswith("/") or "\\" in file or ".." in file.split("/"):
        raise NotFoundError(
            f"{shown!r}: FILE must be a path inside the dataset, at most {MAX_HUB_FILE} "
            "characters, without '..' parts, a leading '/' or a backslash"
        )
    repo, revision = parsed
    offline = settings.HF_HUB_OFFLINE.get()
    return _fetched(
        f"dataset file {url!r}",
        lambda cache: hf_hub_download(
            repo, file, repo_type="dataset", revision=revision, cache_dir=cache, local_files_only=offline
        ),
    )


DATASET_PREFIX = "hf://datasets/"
MAX_HUB_FILE = 1024  # characters of FILE in a dataset path


def _fetched(what: str, fetch: Callable[[Path], object]) -> Path:
    """Run a huggingface_hub fetch against HF_HOME's cache; its failures become one-line NotFoundErrors."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = settings.HF_HOME.get() / "hub"
    try:
        return Path(str(fetch(cache)))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if settings.HF_HUB_OFFLINE.get() else "the hub cannot be reached"
        raise NotFoundError(
            f"{what} is not in the Hugging Face cache {cache} and {why}: download it where a network "
            "exists (`huggingface-cli download` or without HF_HUB_OFFLINE) into the same HF_HOME"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise NotFoundError(f"{what} cannot be fetched: {exc}".splitlines()[0]) from None
    except (HfHubHTTPError, OSError) as exc:
        raise NotFoundError(f"fetching {what} failed: {exc}".splitlines()[0]) from None
    except ValueError as exc:  # huggingface_hub's HFValidationError: an id or file name it refuses
        raise NotFoundError(f"{what} cannot be fetched: {exc}".splitlines()[0]) from None
