"""Soft prompts with peft: prompt tuning, P-tuning and prefix tuning.

Prompt tuning and P-tuning learn `num_virtual_tokens` input embeddings put in front of every prompt.
vLLM no longer has prompt adapters, so the gateway serves them by prepending the learned embeddings
to the prompt's token embeddings (vLLM's prompt-embeddings input); `virtual_token_embeddings` reads
them from a saved adapter. peft saves the *final* embeddings for both: for P-tuning it runs the
prompt encoder MLP once at save time, so the artifact holds no encoder at all.

Prefix tuning learns per-layer key/value prefixes, which vLLM cannot take: it is not served by vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform.errors import ArtifactError
from tuneloop.train.methods.base import ADAPTER_WEIGHTS, PeftMethod, read_adapter_config, register

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import MethodSpec

PROMPT_EMBEDDING_TYPES = ("PROMPT_TUNING", "P_TUNING")


@register
class PromptTuning(PeftMethod):
    """Learned virtual-token embeddings, initialised from `prompt_init_text` or from random vocabulary."""

    name = "prompt_tuning"

    def peft_config(self, model: PreTrainedModel, spec: MethodSpec) -> Any:
        from peft import PromptTuningConfig

        if spec.prompt_init_text:
            return PromptTuningConfig(
                task_type="CAUSAL_LM",
                num_virtual_tokens=spec.num_virtual_tokens,
                prompt_tuning_init="TEXT",
                prompt_tuning_init_text=spec.prompt_init_text,
                tokenizer_name_or_path=model.name_or_path,
            )
        # peft's RANDOM init draws N(0, 1), far larger than real token embeddings; embeddings of
        # sampled vocabulary tokens start on the right scale.
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=spec.num_virtual_tokens,
            prompt_tuning_init="SAMPLE_VOCAB",
        )


@register
class PTuning(PeftMethod):
    """Virtual-token embeddings produced by a trained prompt-encoder MLP (P-tuning).

    peft's MLP encoder has no dropout (its encoder_dropout only applies to the LSTM variant), so
    `MethodSpec.dropout` has no effect here.
    """

    name = "p_tuning"

    def peft_config(self, model: PreTrainedModel, spec: MethodSpec) -> Any:
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=spec.num_virtual_tokens,
            encoder_reparameterization_type="MLP",
            encoder_hidden_size=spec.encoder_hidden_size,
        )


@register
class PrefixTuning(PeftMethod):
    """Learned key/value prefixes in every attention layer (not servable by vLLM)."""

    name = "prefix_tuning"

    def peft_config(self, model: PreTrainedModel, spec: MethodSpec) -> Any:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec.num_virtual_tokens)


def virtual_token_embeddings(adapter_dir: Path) -> torch.Tensor:
    """The learned [num_virtual_tokens, hidden] embeddings of a saved prompt- or P-tuning adapter.

    Prepended to a prompt's token embeddings (as `inputs_embeds`), they give the trained model.
    """
    from safetensors.torch import load_file

    config = read_adapter_config(adapter_dir)
    if config.get("peft_type") not in PROMPT_EMBEDDING_TYPES:
        raise ArtifactError(
            f"{adapter_dir} holds a {config.get('peft_type')!r} adapter; only "
            f"{' and '.join(PROMPT_EMBEDDING_TYPES)} adapters have virtual-token embeddings"
        )
    try:
        embeddings = load_file(str(adapter_dir / ADAPTER_WEIGHTS))["prompt_embeddings"]
    except (FileNotFoundError, KeyError) as exc:
        raise ArtifactError(f"{adapter_dir / ADAPTER_WEIGHTS} has no prompt_embeddings: {exc}") from None
    expected = (config.get("num_virtual_tokens"), config.get("token_dim"))
    if tuple(embeddings.shape) != expected:
        raise ArtifactError(
            f"prompt_embeddings in {adapter_dir} have shape {tuple(embeddings.shape)}, config says {expected}"
        )
    return embeddings
