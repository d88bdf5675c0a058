"""A tiny Llama model and random LoRA adapters, built offline in seconds for tests.

There is no model hub here, so tests build their own: a byte-level BPE tokenizer trained on a small
English text in tests/assets, a 2-layer LlamaConfig model with random (seeded) weights, and a chat
template so vLLM serves `/v1/chat/completions` too. The folder is a normal Hugging Face folder that
transformers, peft and vLLM all load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CORPUS = ASSETS / "tiny_corpus.txt"

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, "<|im_start|>", EOS, PAD]

# ChatML: the role on the <|im_start|> line, the content, then <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# vLLM's CPU attention supports head sizes 32, 64, 80, ...: 128 / 2 heads = 64.
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, MAX_POSITIONS = 128, 2, 2, 2, 256, 512
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` trained on the test corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def build_tiny_llama(dest: Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny random Llama model with tokenizer and chat template to `dest`; return `dest`.

    ~0.5M parameters (~2 MB in float32). Same seed, same weights and tokenizer.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_size),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)
    # transformers writes the template to chat_template.jinja; write it ourselves so vLLM finds it
    # whatever the transformers version does.
    (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def build_random_lora(
    model_dir: Path, dest: Path, *, rank: int = 8, seed: int = 0, std: float = 0.5, alpha: int | None = None
) -> Path:
    """Write a random peft LoRA adapter for the model in `model_dir` to `dest`; return `dest`.

    peft initialises B to zero (an adapter that changes nothing); here both A and B are drawn from
    N(0, std) with a fixed seed so the adapter clearly changes greedy outputs. The config's
    `base_model_name_or_path` is `str(model_dir)`, the string vLLM is started with.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        target_modules=LORA_TARGETS,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.peft_config["default"].base_model_name_or_path = str(model_dir)
    model.save_pretrained(str(dest), safe_serialization=True)
    # Guard the promise above: vLLM's filesystem resolver compares this string exactly.
    saved = json.loads((dest / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(model_dir), saved["base_model_name_or_path"]
    return dest


def bench_model_dir(model: str, scratch: Path) -> Path:
    """The benchmarks' base model: the tiny Llama built in `scratch`, or SmolLM2 as pulled (exits if not)."""
    if model == "tiny":
        return build_tiny_llama(scratch / "tiny-llama")
    import sys

    from tuneloop.platform import settings

    model_dir = settings.TUNELOOP_MODELS_DIR.get() / "smollm2-135m"
    if not (model_dir / "config.json").is_file():
        sys.exit(f"bench: SmolLM2 is not pulled at {model_dir}: run `tuneloop models pull smollm2-135m`")
    return model_dir
