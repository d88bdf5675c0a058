"""Every fine-tuning method trains the tiny Llama, changes only its own weights and saves/loads exactly.

Each method is trained once per module (a fixture parametrised over all nine) on a tiny task: four
fixed sequences drawn from eight tokens, learned by a plain AdamW loop. The tests then read that run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import torch

from tuneloop.platform.artifacts import REFUSED_SUFFIXES, SERVING_BY_METHOD
from tuneloop.platform.errors import ArtifactError, ConfigError
from tuneloop.platform.spec import Method, MethodSpec
from tuneloop.train.methods import base
from tuneloop.train.methods.soft_prompts import virtual_token_embeddings

BASE_REF = "served/tiny-llama"  # the string vLLM is started with; adapters must name it exactly
STEPS = 30

# name -> (MethodSpec options, a learning rate that suits the method on this task). The random tiny
# model caps what soft prompts can do (~0.6 nats in 10 steps, then a plateau), hence one fixed margin.
METHODS: dict[str, tuple[dict[str, Any], float]] = {
    "full": ({}, 1e-2),
    "partial": ({"trainable_layers": [-1]}, 1e-2),
    "lora": ({}, 1e-2),
    "qlora": ({}, 1e-2),
    "prompt_tuning": ({}, 1e-2),
    "p_tuning": ({}, 1e-2),
    "prefix_tuning": ({}, 1e-1),
    "adapter": ({}, 3e-2),
    "ia3": ({}, 1e-1),
}
MARGIN = 0.3  # nats: the final loss must be this much below the first (perplexity down by a quarter)
# What each method may change, as a test on parameter names (of the prepared model).
OWN_PARAMETERS = {
    "lora": "lora_",
    "qlora": "lora_",
    "prompt_tuning": "prompt_encoder",
    "p_tuning": "prompt_encoder",
    "prefix_tuning": "prompt_encoder",
    "adapter": ".bottleneck.",
    "ia3": "ia3_l",
    "partial": "model.layers.1.",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads; on busy cores OpenMP spinning made runs 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(vocab_size: int, rows: int = 4, length: int = 12, distinct: int = 8) -> torch.Tensor:
    """The task: fixed sequences over a few tokens, so even a soft prompt can learn their distribution."""
    generator = torch.Generator().manual_seed(1234)
    tokens = torch.randperm(vocab_size - 10, generator=generator)[:distinct] + 10
    return tokens[torch.randint(0, distinct, (rows, length), generator=generator)]


def train(model: torch.nn.Module, input_ids: torch.Tensor, lr: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    mask = torch.ones_like(input_ids)
    losses = []
    model.train()
    for _ in range(STEPS):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits


@dataclass
class Trained:
    name: str
    method: base.FineTuneMethod
    model: torch.nn.Module
    before: dict[str, torch.Tensor]
    losses: list[float]
    inputs: torch.Tensor
    out_dir: Path


def train_and_save(name: str, model_dir: Path, out_dir: Path) -> Trained:
    options, lr = METHODS[name]
    spec = MethodSpec(name=name, **options)
    method = base.get(name)
    torch.manual_seed(0)
    model = method.prepare(method.load_base(model_dir, spec, dtype=torch.float32, device="cpu"), spec)
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    inputs = batch(model.config.vocab_size)
    losses = train(model, inputs, lr)
    method.save(model, out_dir, BASE_REF)  # still in train mode, as the recipe leaves it
    return Trained(name, method, model, before, losses, inputs, out_dir)


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trained]:
    """Train and save a method once per module: `run("lora")`."""
    done: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in done:
            done[name] = train_and_save(name, tiny_model_dir, tmp_path_factory.mktemp(name))
        return done[name]

    return get


@pytest.fixture(params=sorted(METHODS))
def trained(request: pytest.FixtureRequest, run: Callable[[str], Trained]) -> Trained:
    return run(request.param)


def test_every_method_of_the_spec_is_registered_and_in_the_serving_table() -> None:
    # The table is the one source of how a method is served; a method missing from it cannot register.
    assert base.names() == sorted(get_args(Method)) == sorted(SERVING_BY_METHOD)


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown fine-tuning method 'lora2'") as err:
        base.get("lora2")
    for name in SERVING_BY_METHOD:
        assert name in str(err.value)


def test_importing_the_interface_does_not_import_torch() -> None:
    code = "import sys, tuneloop.train.methods.base; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loss_falls(trained: Trained) -> None:
    first, last = trained.losses[0], trained.losses[-1]
    assert last < first - MARGIN, f"{trained.name}: loss {first:.3f} -> {last:.3f}"


def test_only_the_method_parameters_change(trained: Trained) -> None:
    after = dict(trained.model.named_parameters())
    changed = {key for key, value in trained.before.items() if not torch.equal(value, after[key].detach())}
    trainable = {key for key, value in after.items() if value.requires_grad}
    assert changed == trainable, (
        f"changed but frozen: {changed - trainable}; trainable, unchanged: {trainable - changed}"
    )
    if trained.name == "full":
        assert trainable == set(after)
    else:
        own = OWN_PARAMETERS[trained.name]
        assert trainable and all(own in key for key in trainable), sorted(trainable)
        assert all(own not in key for key in set(after) - trainable)


def test_trainable_parameters_count_4bit_weights_at_full_size(run: Callable[[str], Trained]) -> None:
    lora, qlora = run("lora"), run("qlora")
    counts = lora.method.trainable_parameters(lora.model)
    assert qlora.method.trainable_parameters(qlora.model) == counts
    assert counts[0] == 2 * 4 * (128 * 8 + 8 * 128)  # 2 layers x 4 projections x (A + B), rank 8


def test_save_then_load_gives_identical_logits(trained: Trained, tiny_model_dir: Path) -> None:
    loaded = trained.method.load(tiny_model_dir, trained.out_dir)
    expected = logits(trained.model, trained.inputs)
    torch.testing.assert_close(logits(loaded, trained.inputs), expected, rtol=0, atol=1e-6)


def test_saves_only_safetensors_and_json(trained: Trained) -> None:
    files = sorted(path.name for path in trained.out_dir.iterdir())
    assert not [name for name in files if name.endswith(REFUSED_SUFFIXES)]
    if trained.method.serving == "engine":
        # A whole model folder for its own vLLM engine: weights, config, and the base's tokenizer.
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(files)
        assert all(name.endswith((".safetensors", ".json", ".jinja")) for name in files), files
    else:
        assert files == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads((trained.out_dir / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == BASE_REF


def test_full_model_folder_loads_its_tokenizer(run: Callable[[str], Trained], tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(run("full").out_dir))
    original = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert saved("the cat sat")["input_ids"] == original("the cat sat")["input_ids"]
    assert saved.chat_template == original.chat_template


def test_partial_names_every_index_and_pattern_that_selects_nothing(tiny_model_dir: Path) -> None:
    method = base.get("partial")
    spec = MethodSpec(name="partial", trainable_layers=[0, 2, -3], trainable_patterns=["norm", "nope", "("])
    model = method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu")
    with pytest.raises(ConfigError) as err:
        method.prepare(model, spec)
    message = str(err.value)
    assert "index 2 " in message and "index -3 " in message and "index 0 " not in message
    assert "'nope' matches no parameter" in message and "'(' is not a valid regular expression" in message
    assert "'norm'" not in message


def test_partial_pattern_may_name_a_tied_weight(tiny_model_dir: Path) -> None:
    method = base.get("partial")
    spec = MethodSpec(name="partial", trainable_patterns=[r"^lm_head\."])  # tied to embed_tokens here
    model = method.prepare(method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu"), spec)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["model.embed_tokens.weight"]


def _randomise_lora_b(model: torch.nn.Module) -> None:
    # peft starts B at zero, which makes A's gradient zero whatever the base layers do.
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _lora_grads(model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=inputs, labels=inputs).loss.backward()
    # A missing gradient is how the bitsandbytes bug shows: count it as zero.
    return {
        name: torch.zeros_like(param) if param.grad is None else param.grad.clone()
        for name, param in model.named_parameters()
        if "lora_" in name
    }


def _qlora_and_reference_grads(
    model_dir: Path, *, keep_fix: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LoRA gradients of a QLoRA model after a validation pass, and of its fp32-dequantized twin."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    spec = MethodSpec(name="qlora")
    qlora = base.get("qlora")
    quantized = qlora.load_base(model_dir, spec, dtype=torch.float32, device="cpu")
    # The reference: the same 4-bit weights, dequantized into a plain fp32 model, with plain LoRA.
    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            reference.get_submodule(name).weight.data = weight.to(torch.float32)
            if not keep_fix:  # undo what load_base did, to show the bug
                module.support_avx512bf16_for_cpu = bnb.functional.has_avx512bf16()
    model = qlora.prepare(quantized, spec)
    reference = base.get("lora").prepare(reference, spec)
    _randomise_lora_b(model)
    lora_weights = {name: p for name, p in model.state_dict().items() if "lora_" in name}
    assert not reference.load_state_dict(lora_weights, strict=False).unexpected_keys
    inputs = batch(model.config.vocab_size)
    logits(model, inputs)  # a validation pass: eval mode, no grad (what breaks later backward passes)
    return _lora_grads(model, inputs), _lora_grads(reference, inputs)


def test_qlora_gradients_after_an_eval_pass_match_the_dequantized_reference(tiny_model_dir: Path) -> None:
    grads, expected = _qlora_and_reference_grads(tiny_model_dir, keep_fix=True)
    assert grads.keys() == expected.keys() and len(grads) == 2 * 4 * 2  # A, B x 4 projections x 2 layers
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name}: zero gradient"
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6)


def test_without_the_cpu_fix_gradients_go_wrong_after_an_eval_pass(tiny_model_dir: Path) -> None:
    """Why the fix exists: undo it and the same steps silently train on wrong gradients.

    The repacked layers run a kernel with no autograd, so nothing flows back through a quantized
    base weight: every LoRA gradient loses those paths (none at all when q/v alone are targeted).
    """
    import bitsandbytes as bnb

    if not bnb.functional.has_avx512bf16():
        pytest.skip("this CPU has no avx512_bf16: bitsandbytes never repacks, nothing to show")
    grads, expected = _qlora_and_reference_grads(tiny_model_dir, keep_fix=False)
    errors = {name: ((grads[name] - expected[name]).norm() / expected[name].norm()).item() for name in grads}
    assert all(error > 0.05 for error in errors.values()), errors


def test_qlora_saves_a_plain_lora_adapter_for_the_unquantized_base(
    run: Callable[[str], Trained], tiny_model_dir: Path
) -> None:
    import bitsandbytes as bnb

    trained = run("qlora")
    config = json.loads((trained.out_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == BASE_REF
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    # What vLLM does: the same adapter files on the full-precision base.
    on_full = base.get("lora").load(tiny_model_dir, trained.out_dir)
    assert not any(isinstance(module, bnb.nn.Linear4bit) for module in on_full.modules())
    served = {name: p for name, p in on_full.named_parameters() if "lora_" in name}
    learned = {name: p for name, p in trained.model.named_parameters() if "lora_" in name}
    assert served.keys() == learned.keys()
    assert all(torch.equal(served[name], learned[name].detach()) for name in served)


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_prepending_the_saved_embeddings_gives_the_trained_model(
    name: str, run: Callable[[str], Trained], tiny_model_dir: Path
) -> None:
    """What the gateway does for vLLM: base model, inputs_embeds = [virtual tokens; prompt tokens]."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    trained = run(name)
    virtual = virtual_token_embeddings(trained.out_dir)
    assert virtual.shape == (8, 128)
    # P-tuning: the encoder MLP is not in the artifact, only its final output.
    assert list(load_file(str(trained.out_dir / "adapter_model.safetensors"))) == ["prompt_embeddings"]

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    inputs = trained.inputs
    with torch.no_grad():
        embeds = torch.cat([virtual.expand(len(inputs), -1, -1), plain.get_input_embeddings()(inputs)], dim=1)
        got = plain(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2])).logits
    torch.testing.assert_close(got, logits(trained.model, inputs), rtol=0, atol=1e-6)


def test_virtual_token_embeddings_refuses_other_adapters(run: Callable[[str], Trained]) -> None:
    with pytest.raises(ArtifactError, match="'PREFIX_TUNING' adapter"):
        virtual_token_embeddings(run("prefix_tuning").out_dir)


def test_prompt_tuning_starts_from_the_init_text(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    text = "the cat sat on the mat"
    spec = MethodSpec(name="prompt_tuning", num_virtual_tokens=20, prompt_init_text=text)
    method = base.get("prompt_tuning")
    model = method.prepare(method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu"), spec)
    ids = AutoTokenizer.from_pretrained(str(tiny_model_dir))(text)["input_ids"]
    ids = (ids * 20)[:20]  # peft repeats the text to fill every virtual token
    expected = model.get_input_embeddings()(torch.tensor(ids))
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)


def test_bottleneck_adapter_starts_as_the_base_model(tiny_model_dir: Path) -> None:
    method = base.get("adapter")
    spec = MethodSpec(name="adapter")
    plain = method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu")
    inputs = batch(plain.config.vocab_size)
    expected = logits(plain, inputs)
    model = method.prepare(method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu"), spec)
    adapters = sorted(
        {name.split(".bottleneck.")[0] for name, _ in model.named_parameters() if "bottleneck" in name}
    )
    assert adapters == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert torch.equal(logits(model, inputs), expected)


def test_bottleneck_adapter_config(run: Callable[[str], Trained]) -> None:
    config = json.loads((run("adapter").out_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "BOTTLENECK" and config["base_model_name_or_path"] == BASE_REF
    assert config["bottleneck_size"] == 16 and config["target_modules"] == ["mlp"]


def test_bottleneck_adapter_after_attention_too(tiny_model_dir: Path) -> None:
    """Houlsby placement: attention returns a tuple, and only its hidden states are adapted."""
    method = base.get("adapter")
    spec = MethodSpec(name="adapter", target_modules=["self_attn", "mlp"], bottleneck=4)
    model = method.prepare(method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu"), spec)
    assert method.trainable_parameters(model)[0] == 4 * (128 * 4 + 4 + 4 * 128 + 128)
    losses = train(model, batch(model.config.vocab_size), 3e-2)
    assert losses[-1] < losses[0] - MARGIN


def test_bottleneck_unknown_target_is_a_config_error(tiny_model_dir: Path) -> None:
    method = base.get("adapter")
    spec = MethodSpec(name="adapter", target_modules=["mlp", "feed_forward"])
    with pytest.raises(ConfigError, match="'feed_forward'"):
        method.prepare(method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu"), spec)


@pytest.mark.parametrize("name", ["lora", "prompt_tuning", "ia3"])
def test_a_warm_start_continues_from_the_saved_weights(
    name: str, run: Callable[[str], Trained], tiny_model_dir: Path
) -> None:
    """`output.init_from`: a fresh prepare, then the saved weights: the same model as the trained one."""
    trained = run(name)
    options, _ = METHODS[name]
    spec = MethodSpec(name=name, **options)
    torch.manual_seed(1)  # other initial weights than the trained run's
    fresh = trained.method.prepare(
        trained.method.load_base(tiny_model_dir, spec, dtype=torch.float32, device="cpu"), spec
    )
    assert not torch.allclose(logits(fresh, trained.inputs), logits(trained.model, trained.inputs))
    trained.method.warm_start(fresh, trained.out_dir)
    torch.testing.assert_close(
        logits(fresh, trained.inputs), logits(trained.model, trained.inputs), rtol=0, atol=1e-6
    )
    assert all(p.requires_grad for n, p in fresh.named_parameters() if OWN_PARAMETERS[name] in n)


def test_a_warm_start_is_refused_for_other_methods(
    run: Callable[[str], Trained], tiny_model_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="PEFT methods only, not 'adapter'"):
        base.get("adapter").warm_start(torch.nn.Linear(1, 1), run("adapter").out_dir)
