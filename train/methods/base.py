"""The interface every fine-tuning method implements, and the registry that finds one by name.

The training recipe is method-agnostic: it calls `load_base` → `prepare` → its own loop → `save`, and
evaluation calls `load`. Each method family lives in one module of this package and registers its
classes with `@register`; `get(name)` imports the built-in modules on first use, so importing this
module stays cheap (no torch) for the CLI and the control plane.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from tuneloop.platform.adapters import ADAPTER_CONFIG, read_adapter_config
from tuneloop.platform.artifacts import SERVING_BY_METHOD, Serving
from tuneloop.platform.errors import ArtifactError, ConfigError
from tuneloop.platform.plugins import Plugins

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import MethodSpec

# Modules of this package that hold built-in methods; importing one registers its classes.
BUILTIN_MODULES = ("full", "lora", "soft_prompts", "bottleneck", "ia3")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class FineTuneMethod(ABC):
    """One way of fine-tuning a causal LM: what is trained, how it is saved, how it is served."""

    name: ClassVar[str]
    serving: ClassVar[Serving]  # set by `register` from the method table

    def load_base(
        self, model_dir: Path, spec: MethodSpec, *, dtype: torch.dtype, device: str | torch.device
    ) -> PreTrainedModel:
        """Load the base model to train on (default: the plain model in `dtype` on `device`)."""
        from transformers import AutoModelForCausalLM

        # device_map with one device: weights are loaded straight onto it (no accelerate hooks).
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, device_map={"": str(device)})

    @abstractmethod
    def prepare(self, model: PreTrainedModel, spec: MethodSpec) -> torch.nn.Module:
        """Return the model to train: forward(input_ids, attention_mask, labels) gives .loss and .logits,
        and only this method's parameters require gradients."""

    @abstractmethod
    def save(self, model: torch.nn.Module, out_dir: Path, base_model_ref: str) -> None:
        """Write the trained result to `out_dir` as safetensors + JSON; adapters name `base_model_ref`
        (the model string the serving engine serves) as their base."""

    @abstractmethod
    def load(self, model_dir: Path, out_dir: Path) -> torch.nn.Module:
        """Rebuild the trained model from the base in `model_dir` and the result in `out_dir` (eval mode)."""

    def warm_start(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Copy trained weights saved in `out_dir` into `model` (a job's `output.init_from`)."""
        raise ConfigError(f"output.init_from works for PEFT methods only, not {self.name!r}")

    def trainable_parameters(self, model: torch.nn.Module) -> tuple[int, int]:
        """(trainable, total) parameter counts; 4-bit weights count as their unquantized size."""
        trainable = total = 0
        for param in model.parameters():
            # bitsandbytes packs two 4-bit values per byte; its quant_state keeps the real shape.
            quant_state = getattr(param, "quant_state", None)
            count = quant_state.shape.numel() if quant_state is not None else param.numel()
            total += count
            trainable += count if param.requires_grad else 0
        return trainable, total


PLUGINS: Plugins[FineTuneMethod] = Plugins("fine-tuning method", "methods", __package__, BUILTIN_MODULES)
M = TypeVar("M", bound=type[FineTuneMethod])


def register(cls: M) -> M:
    """Class decorator: make `cls` available as `get(cls.name)`, served as the method table says
    (`artifacts.SERVING_BY_METHOD`, the one place the gateway reads too)."""
    if cls.name not in SERVING_BY_METHOD:
        raise TypeError(f"method {cls.name!r} has no row in platform/artifacts.py SERVING_BY_METHOD")
    cls.serving = SERVING_BY_METHOD[cls.name]
    return PLUGINS.register(cls)


def names() -> list[str]:
    """Names of every registered method, sorted."""
    return PLUGINS.names()


def get(name: str) -> FineTuneMethod:
    """The method registered as `name`; an unknown name is a ConfigError listing the known ones."""
    return PLUGINS.lookup(name)()


class PeftMethod(FineTuneMethod):
    """A method that is one peft config: peft injects, saves and reloads it; we pin the base name."""

    @abstractmethod
    def peft_config(self, model: PreTrainedModel, spec: MethodSpec) -> Any:
        """The peft config (`peft.PeftConfig`) for `spec` on `model`."""

    def prepare(self, model: PreTrainedModel, spec: MethodSpec) -> torch.nn.Module:
        from peft import get_peft_model

        # get_peft_model freezes every base parameter; only the method's own ones stay trainable.
        return get_peft_model(model, self.peft_config(model, spec))

    def save(self, model: torch.nn.Module, out_dir: Path, base_model_ref: str) -> None:
        from peft import PeftModel

        model = unwrap(model)
        if not isinstance(model, PeftModel):
            raise TypeError(f"{self.name}.save needs the PeftModel returned by prepare, got {type(model)}")
        # peft only fills base_model_name_or_path when it is unset; vLLM compares it with its --model.
        model.peft_config["default"].base_model_name_or_path = base_model_ref
        # save_embedding_layers=False: we never resize the vocabulary, and peft's "auto" would look
        # base_model_ref up on the Hugging Face Hub (a network call) when it is not a local folder.
        model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
        # peft also writes a generic README.md model card; the artifact is weights + JSON only.
        (out_dir / "README.md").unlink(missing_ok=True)
        check_base_ref(out_dir, base_model_ref)

    def load(self, model_dir: Path, out_dir: Path) -> torch.nn.Module:
        from peft import PeftModel

        read_adapter_config(out_dir)  # a clear ArtifactError rather than peft's own for a wrong folder
        return PeftModel.from_pretrained(self.base_for_load(model_dir), str(out_dir)).eval()

    def warm_start(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Copy the trained weights saved in `out_dir` into `model` (from `prepare`, same options), so
        training continues from them; every saved weight must find its place."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        read_adapter_config(out_dir)
        saved = load_file(str(out_dir / ADAPTER_WEIGHTS))
        target = unwrap(model)
        result = set_peft_model_state_dict(target, saved)
        # peft loads soft prompts into the prompt encoder itself, yet still lists their key as unexpected.
        unexpected = [k for k in result.unexpected_keys if k != "prompt_embeddings"]  # type: ignore[attr-defined]
        if unexpected:
            shown = ", ".join(sorted(unexpected)[:3])
            raise ConfigError(
                f"output.init_from: {len(unexpected)} saved weights have no place in this "
                f"{self.name} model (other options than the version's?), e.g. {shown}"
            )
        trainable = [p for p in target.parameters() if p.requires_grad]
        if not trainable or not all(torch.isfinite(p).all() for p in trainable):
            raise ConfigError(f"output.init_from: the weights in {out_dir} left no finite trainable weights")

    def base_for_load(self, model_dir: Path) -> PreTrainedModel:
        """The base that `load` puts the adapter on: the saved model in its stored dtype."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (Ray Train's prepare_model adds one)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def write_adapter_config(out_dir: Path, config: dict[str, Any]) -> None:
    """Write `adapter_config.json` for adapters that are not peft's own (sorted, stable)."""
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_base_ref(out_dir: Path, base_model_ref: str) -> None:
    """Guard the promise vLLM relies on: the saved config names exactly the served base model."""
    saved = read_adapter_config(out_dir).get("base_model_name_or_path")
    if saved != base_model_ref:
        raise ArtifactError(
            f"{out_dir / ADAPTER_CONFIG} names base {saved!r}, expected {base_model_ref!r}; "
            "vLLM would refuse to serve it"
        )
