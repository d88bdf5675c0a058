"""Full and partial fine-tuning: the result is a new model, served by its own vLLM engine.

Full trains every weight. Partial (layer freezing) trains the transformer blocks named by index and
the parameters matched by regular expressions, and freezes the rest. Both save a complete Hugging
Face folder (safetensors weights, config, and the base's tokenizer files copied verbatim) that vLLM
starts from like any base model.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.platform.errors import ArtifactError, ConfigError
from tuneloop.train.methods.base import FineTuneMethod, register, unwrap

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import MethodSpec

# Copied from the base folder when present: what a tokenizer and chat template need, all JSON/text.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


@register
class Full(FineTuneMethod):
    """Every weight trainable."""

    name = "full"

    def prepare(self, model: PreTrainedModel, spec: MethodSpec) -> torch.nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, out_dir: Path, base_model_ref: str) -> None:
        # base_model_ref is unused: the saved folder *is* the model its engine serves (the manifest
        # keeps the lineage). The tokenizer comes from the folder the base was loaded from.
        model = unwrap(model)
        base_dir = Path(getattr(model, "name_or_path", ""))
        if not (base_dir / "config.json").is_file():
            raise ArtifactError(
                f"cannot find the base folder {str(base_dir)!r} to copy tokenizer files from; "
                "save the model returned by prepare"
            )
        model.save_pretrained(str(out_dir), safe_serialization=True)  # type: ignore[operator]
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, out_dir / name)

    def load(self, model_dir: Path, out_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(out_dir), dtype="auto").eval()


@register
class Partial(Full):
    """Chosen blocks (by index) and parameters (by regex) trainable, everything else frozen."""

    name = "partial"

    def prepare(self, model: PreTrainedModel, spec: MethodSpec) -> torch.nn.Module:
        chosen = trainable_names(model, spec.trainable_layers or [], spec.trainable_patterns or [])
        model.requires_grad_(False)
        # remove_duplicate=False: a tied weight (lm_head = embed_tokens) is one tensor under two
        # names, and a pattern may name either.
        for name, param in model.named_parameters(remove_duplicate=False):
            if name in chosen:
                param.requires_grad_(True)
        return model


def trainable_names(model: torch.nn.Module, layers: list[int], patterns: list[str]) -> set[str]:
    """Parameter names chosen by block indices and regexes; every one that selects nothing is an error."""
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    prefix, count = _blocks(model)
    chosen: set[str] = set()
    problems = []
    for index in layers:
        if not -count <= index < count:
            problems.append(f"trainable_layers index {index} is out of range for {count} blocks")
            continue
        block = f"{prefix}.{index % count}."
        chosen.update(name for name in names if name.startswith(block))
    for pattern in patterns:
        try:
            matched = [name for name in names if re.search(pattern, name)]
        except re.error as exc:
            problems.append(f"trainable_patterns {pattern!r} is not a valid regular expression: {exc}")
            continue
        if not matched:
            problems.append(f"trainable_patterns {pattern!r} matches no parameter (e.g. {names[0]!r})")
        chosen.update(matched)
    if problems:
        raise ConfigError("partial fine-tuning: " + "; ".join(problems))
    return chosen


def _blocks(model: torch.nn.Module) -> tuple[str, int]:
    """Name and length of the model's list of transformer blocks (`model.layers` in Llama)."""
    import torch

    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == expected:
            return name, len(module)
    raise ConfigError(f"cannot find the transformer blocks of {type(model).__name__} to index them")
