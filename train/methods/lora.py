"""LoRA and QLoRA: low-rank updates on chosen projections, served by vLLM's runtime LoRA.

QLoRA trains the same peft LoRA on a bitsandbytes NF4 4-bit copy of the base. The saved adapter is a
plain LoRA adapter (no trace of quantization), so vLLM serves it on the unquantized base; `load`
rebuilds the 4-bit model it was trained on, which is what identical-logits checks need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.train.methods.base import PeftMethod, register

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import MethodSpec

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@register
class LoRA(PeftMethod):
    """peft LoRA (default targets: the attention projections)."""

    name = "lora"

    def peft_config(self, model: PreTrainedModel, spec: MethodSpec) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=spec.rank,
            # peft annotates lora_alpha as int, but both peft and vLLM use it as alpha / r.
            lora_alpha=spec.alpha,  # type: ignore[arg-type]
            lora_dropout=spec.dropout,
            target_modules=list(spec.target_modules or ATTENTION_PROJECTIONS),
            bias="none",
            task_type="CAUSAL_LM",
        )


@register
class QLoRA(LoRA):
    """LoRA on an NF4 4-bit base (bitsandbytes), saved as a plain LoRA adapter."""

    name = "qlora"

    def load_base(
        self, model_dir: Path, spec: MethodSpec, *, dtype: torch.dtype, device: str | torch.device
    ) -> PreTrainedModel:
        return load_4bit(model_dir, compute_dtype=dtype, device=device)

    def prepare(self, model: PreTrainedModel, spec: MethodSpec) -> torch.nn.Module:
        from peft import prepare_model_for_kbit_training

        # Freezes the base and upcasts the non-quantized weights (norms, embeddings) to fp32 for stable
        # updates. Gradient checkpointing is the recipe's choice, not this method's.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(model, spec)

    def base_for_load(self, model_dir: Path) -> PreTrainedModel:
        import torch

        return load_4bit(model_dir, compute_dtype=torch.float32, device="cpu")


def load_4bit(model_dir: Path, *, compute_dtype: torch.dtype, device: str | torch.device) -> PreTrainedModel:
    """The base quantized to NF4 4-bit (double quantization), with the CPU gradient fix applied."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=quantization, dtype=compute_dtype, device_map={"": str(device)}
    )
    disable_cpu_repacking(model)
    return model


def disable_cpu_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU bf16 kernel; returns the layers changed.

    On CPUs with avx512_bf16, bitsandbytes 0.50.2 repacks a Linear4bit's weights during any no-grad
    eval forward, and every later backward pass then gives no (silently zero) LoRA gradients. So a
    validation pass in the middle of training would stop learning without an error. Turning the
    fast path off on every layer right after loading keeps gradients equal to the fp32 reference.
    """
    import bitsandbytes as bnb

    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for module in layers:
        module.support_avx512bf16_for_cpu = False
    return len(layers)
