"""IA3 with peft: learned per-channel scaling vectors on keys, values and the feed-forward input.

The fewest trainable parameters of all methods (one vector per target). vLLM has no IA3 support, so
it is not served by vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneloop.train.methods.base import PeftMethod, register

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import MethodSpec

IA3_TARGETS = ["k_proj", "v_proj", "down_proj"]
# IA3 scales the *input* of feed-forward targets (the activations) and the output of the others.
FEEDFORWARD = {"down_proj"}


@register
class IA3(PeftMethod):
    """peft IA3 (default targets k_proj, v_proj, down_proj; down_proj as feed-forward)."""

    name = "ia3"

    def peft_config(self, model: PreTrainedModel, spec: MethodSpec) -> Any:
        from peft import IA3Config

        targets = list(spec.target_modules or IA3_TARGETS)
        return IA3Config(
            task_type="CAUSAL_LM",
            target_modules=targets,
            feedforward_modules=[target for target in targets if target in FEEDFORWARD],
        )
