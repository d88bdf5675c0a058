"""`tuneloop adapters export REF DIR [--merge]`: take a stored version elsewhere.

Without --merge the version's own files are written: for an adapter, the PEFT folder
(`adapter_config.json` + `adapter_model.safetensors`) that peft's `PeftModel.from_pretrained` and vLLM's
`--lora-modules` load; for a full or partial fine-tune, the whole model folder. With --merge an
adapter is folded into its base model with peft's `merge_and_unload` and saved as a plain Hugging Face
model folder (safetensors, config, tokenizer, chat template) that transformers and vLLM load with no
adapter support at all. Only methods whose weights merge into the base (LoRA, QLoRA, IA3) can be merged;
soft prompts and bottleneck adapters add computation rather than change weights, so --merge refuses them.

The result is written to a sibling temporary folder and renamed to DIR at the end, so DIR is either
complete or absent; an existing DIR is never overwritten.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tuneloop.platform.adapters import inspect_adapter
from tuneloop.platform.artifacts import MANIFEST, ArtifactStore
from tuneloop.platform.basemodels import resolve_model
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.promotion import serving_of
from tuneloop.platform.registry import Registry

MERGEABLE = ("LORA", "IA3")
# What a merged folder takes from the base beside the weights: the tokenizer and its chat template.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def export_version(
    ref: str,
    dest: Path,
    *,
    merge: bool = False,
    registry: Registry,
    store: ArtifactStore,
    progress: Callable[[str], None] = print,
) -> Path:
    """Write version `ref` (ADAPTER@N or an alias) to the new folder `dest`; see the module docstring."""
    if dest.exists():
        raise ConfigError(f"{dest} already exists; export into a new folder")
    version = registry.get_version(ref)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        stored = store.fetch(version.adapter.name, version.number, work / "stored")
        (stored / MANIFEST).unlink()
        whole_model = serving_of(version, store) == "engine"
        if merge and not whole_model:
            _merge(stored, version.adapter.base_model, work / "out", version.ref, progress)
        else:
            if merge:
                progress(
                    f"{version.ref} is a {version.method} fine-tune, already a whole model: exported as is"
                )
            stored.rename(work / "out")
        (work / "out").chmod(0o755)
        (work / "out").rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"{version.ref} exported to {dest}" + (" (merged into its base model)" if merge else ""))
    return dest


def _merge(adapter: Path, base_ref: str, out: Path, ref: str, progress: Callable[[str], None]) -> None:
    found = inspect_adapter(adapter)
    if found.peft_type not in MERGEABLE:
        raise ConfigError(
            f"{ref} is a {found.method} adapter ({found.peft_type}), whose weights do not merge into the "
            "base model; export it without --merge (a PEFT folder)"
        )
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = resolve_model(base_ref)
    progress(f"merging {ref} into {base_ref} ({base_dir})")
    # The base's own dtype ("auto"): merging in float32 and saving would double a bf16 model's size.
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    with torch.no_grad():
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
