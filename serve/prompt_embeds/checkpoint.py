"""Reading the two tensors prompt-embedding serving needs, without loading any model.

The base model's input embedding matrix comes straight out of its safetensors files: the
parameter's name is found on a weightless ("meta" device) instance of the architecture, so any
model transformers knows works, whether its checkpoint says `model.embed_tokens.weight`,
`transformer.wte.weight`, or only `lm_head.weight` for tied embeddings. The virtual tokens come
out of a saved peft prompt-tuning or P-tuning adapter, where peft stores the final embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform.adapters import read_adapter_config
from tuneloop.platform.errors import ArtifactError

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"
"""Where peft saves the virtual tokens; for P-tuning, the prompt encoder's output at save time."""
SERVABLE_PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING")
SHARD_INDEX = "model.safetensors.index.json"


def load_input_embeddings(model_dir: Path) -> torch.Tensor:
    """The (vocab, hidden) input embedding matrix of the model in `model_dir`, in its stored dtype."""
    from safetensors import safe_open

    wanted = _embedding_parameter_names(model_dir)
    files = _checkpoint_keys(model_dir)
    for name in wanted:
        for file, keys in files.items():
            # Checkpoints may drop or add a wrapper prefix ("model.") relative to the module tree.
            key = next(
                (k for k in keys if k == name or k.endswith("." + name) or name.endswith("." + k)), None
            )
            if key is not None:
                with safe_open(str(file), framework="pt") as handle:
                    return handle.get_tensor(key)
    raise ArtifactError(f"no input embedding matrix in {model_dir}: looked for {', '.join(wanted)}")


def _embedding_parameter_names(model_dir: Path) -> list[str]:
    """Names of the input embedding weight, then of the output one when the two are tied."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):  # the module tree without allocating a single weight
        model = AutoModelForCausalLM.from_config(config)
    embedding = model.get_input_embeddings()
    # Some architectures scale or otherwise transform the lookup (Gemma's ScaledWordEmbedding);
    # a plain row lookup would then not be what the model sees, so refuse rather than be wrong.
    if type(embedding) is not torch.nn.Embedding:
        raise ArtifactError(
            f"{model_dir}: input embeddings are a {type(embedding).__name__}, not a plain lookup table; "
            "prompt-embedding serving supports plain nn.Embedding models only"
        )
    modules = {id(module): name for name, module in model.named_modules()}
    names = [f"{modules[id(embedding)]}.weight"]
    output = model.get_output_embeddings()
    if output is not None and output.weight is embedding.weight:
        names.append(f"{modules[id(output)]}.weight")
    return names


def _checkpoint_keys(model_dir: Path) -> dict[Path, list[str]]:
    from safetensors import safe_open

    index = model_dir / SHARD_INDEX
    if index.exists():
        files: dict[Path, list[str]] = {}
        for key, shard in json.loads(index.read_text(encoding="utf-8"))["weight_map"].items():
            files.setdefault(model_dir / shard, []).append(key)
        return files
    found = sorted(model_dir.glob("*.safetensors"))
    if not found:
        raise ArtifactError(f"{model_dir} has no *.safetensors files; convert the checkpoint to safetensors")
    keys: dict[Path, list[str]] = {}
    for file in found:
        with safe_open(str(file), framework="pt") as handle:
            keys[file] = list(handle.keys())
    return keys


def load_virtual_tokens(adapter_dir: Path, hidden_size: int) -> torch.Tensor:
    """The (num_virtual_tokens, hidden_size) virtual tokens of a saved peft prompt/P-tuning adapter."""
    from safetensors import SafetensorError, safe_open

    config = _adapter_config(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as handle:
            keys = list(handle.keys())
            if PROMPT_EMBEDDINGS_KEY not in keys:
                raise ArtifactError(f"{weights} has no {PROMPT_EMBEDDINGS_KEY!r} tensor (keys: {keys})")
            virtual = handle.get_tensor(PROMPT_EMBEDDINGS_KEY)
    except (FileNotFoundError, SafetensorError) as exc:
        raise ArtifactError(f"cannot read {weights}: {exc}; save the adapter with safetensors") from None
    expected = (config.get("num_virtual_tokens"), hidden_size)
    if tuple(virtual.shape) != expected:
        raise ArtifactError(
            f"{PROMPT_EMBEDDINGS_KEY} in {adapter_dir} has shape {tuple(virtual.shape)}, expected "
            f"{expected} (num_virtual_tokens, hidden size of the base model): is it for another base?"
        )
    return virtual


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    config = read_adapter_config(adapter_dir)
    peft_type = config.get("peft_type")
    if peft_type not in SERVABLE_PEFT_TYPES:
        raise ArtifactError(
            f"{adapter_dir} holds a {peft_type!r} adapter; only {' and '.join(SERVABLE_PEFT_TYPES)} "
            "adapters are served as prompt embeddings"
        )
    # Encoder-decoder soft prompts carry tokens for two stacks; vLLM takes one input sequence.
    if config.get("num_transformer_submodules", 1) != 1:
        raise ArtifactError(f"{adapter_dir} is for an encoder-decoder model; only causal LMs are served")
    return config
