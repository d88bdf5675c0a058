"""Adapter tuning with bottleneck adapters (Houlsby/Pfeiffer style), written here: peft has none.

Each adapter maps a sublayer's output h to h + up(dropout(gelu(down(h)))), with `up` zero-initialised
so training starts exactly at the base model. By default one adapter follows each decoder layer's
MLP (Pfeiffer's placement); `target_modules` names other sublayers (e.g. `self_attn` too, Houlsby).

How it is inserted: the adapter becomes a child module of its target (`...mlp.bottleneck`) and a
forward hook on the target passes the target's output through it. Wrapping the target instead would
rename every base parameter beneath it (`mlp.gate_proj` → `mlp.inner.gate_proj`), which breaks
loading base checkpoints, tied weights and device maps by name; as a child, the adapter still moves
with `.to()`, shows in `parameters()` for the optimizer and DDP, and in `print(model)`.

Saved as `adapter_model.safetensors` (keys `<target>.bottleneck.{down,up}.{weight,bias}`) plus an
`adapter_config.json` of our own with `"peft_type": "BOTTLENECK"`. vLLM cannot serve it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuneloop.platform.errors import ArtifactError, ConfigError
from tuneloop.train.methods.base import (
    ADAPTER_WEIGHTS,
    FineTuneMethod,
    check_base_ref,
    read_adapter_config,
    register,
    unwrap,
    write_adapter_config,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import MethodSpec

PEFT_TYPE = "BOTTLENECK"
DEFAULT_TARGETS = ["mlp"]
CHILD = "bottleneck"


class Bottleneck(torch.nn.Module):
    """h → h + up(dropout(gelu(down(h)))); the identity until `up` learns something."""

    def __init__(self, width: int, size: int, dropout: float) -> None:
        super().__init__()
        self.down = torch.nn.Linear(width, size)
        self.act = torch.nn.GELU()
        self.dropout = torch.nn.Dropout(dropout)
        self.up = torch.nn.Linear(size, width)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.dropout(self.act(self.down(hidden))))


def _through_adapter(module: torch.nn.Module, args: Any, output: Any) -> Any:
    adapter = getattr(module, CHILD)
    # Attention blocks return (hidden, weights, ...): only the hidden states go through the adapter.
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def attach(model: PreTrainedModel, targets: list[str], size: int, dropout: float) -> list[str]:
    """Put an adapter after every module whose last name part is in `targets`; returns their names."""
    found = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in targets]
    unmatched = [t for t in targets if not any(name.rsplit(".", 1)[-1] == t for name in found)]
    if unmatched:
        raise ConfigError(f"adapter target_modules {unmatched} match no module of {type(model).__name__}")
    hidden = int(model.config.hidden_size)
    for name in found:
        target = model.get_submodule(name)
        reference = next(target.parameters())
        # A projection as target (e.g. o_proj) is adapted at its own output width.
        width = target.out_features if isinstance(target, torch.nn.Linear) else hidden
        adapter = Bottleneck(width, size, dropout)
        target.add_module(CHILD, adapter.to(device=reference.device, dtype=reference.dtype))
        target.register_forward_hook(_through_adapter)
    return found


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter weight, keyed by its full name in the model."""
    return {
        f"{name}.{key}": value
        for name, module in model.named_modules()
        if isinstance(module, Bottleneck)
        for key, value in module.state_dict().items()
    }


@register
class BottleneckAdapters(FineTuneMethod):
    """Bottleneck adapters after each decoder layer's MLP (or `target_modules`)."""

    name = "adapter"

    def prepare(self, model: PreTrainedModel, spec: MethodSpec) -> torch.nn.Module:
        model.requires_grad_(False)
        targets = list(spec.target_modules or DEFAULT_TARGETS)
        names = attach(model, targets, spec.bottleneck, spec.dropout)
        # Kept beside the model so save() writes the settings it was built with.
        model.tuneloop_bottleneck = {  # type: ignore[assignment]
            "target_modules": targets,
            "bottleneck_size": spec.bottleneck,
            "dropout": spec.dropout,
            "adapted_modules": names,
        }
        return model

    def save(self, model: torch.nn.Module, out_dir: Path, base_model_ref: str) -> None:
        from safetensors.torch import save_file

        model = unwrap(model)
        settings = getattr(model, "tuneloop_bottleneck", None)
        if settings is None:
            raise TypeError("adapter.save needs the model returned by prepare")
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().contiguous().cpu() for key, value in adapter_state(model).items()}
        save_file(state, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = {"peft_type": PEFT_TYPE, "activation": "gelu", "base_model_name_or_path": base_model_ref}
        write_adapter_config(out_dir, {**config, **settings})
        check_base_ref(out_dir, base_model_ref)

    def load(self, model_dir: Path, out_dir: Path) -> torch.nn.Module:
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        config = read_adapter_config(out_dir)
        if config.get("peft_type") != PEFT_TYPE:
            raise ArtifactError(f"{out_dir} holds a {config.get('peft_type')!r} adapter, not {PEFT_TYPE}")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
        attach(model, config["target_modules"], config["bottleneck_size"], config["dropout"])
        saved = load_file(str(out_dir / ADAPTER_WEIGHTS))
        expected = adapter_state(model)
        if saved.keys() != expected.keys():
            missing, unexpected = (
                sorted(expected.keys() - saved.keys()),
                sorted(saved.keys() - expected.keys()),
            )
            raise ArtifactError(
                f"{out_dir / ADAPTER_WEIGHTS} does not fit {model_dir}: "
                f"missing {missing}, unexpected {unexpected}"
            )
        with torch.no_grad():
            for key, value in saved.items():
                expected[key].copy_(value)
        model.requires_grad_(False)
        return model.eval()
