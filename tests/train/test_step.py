"""The model step (train/step.py): the chunked loss, packing, checkpointing and compile change how the
loss is computed, never its value or its gradients; and bench/train_gpu.py keeps running on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.spec import HyperParams, MethodSpec, parse_spec
from tuneloop.train import methods, step
from tuneloop.train.batches import collate_packed, input_tokens, scored_tokens
from tuneloop.train.schedule import lr_factor
from tuneloop.train.tokenize import IGNORE_INDEX, Encoded, collate

ROOT = Path(__file__).resolve().parents[2]


def _model(model_dir: Path, name: str = "lora", **options: object) -> torch.nn.Module:
    method = methods.get(name)
    spec = MethodSpec.model_validate({"name": name, **options})
    torch.manual_seed(0)
    model = method.prepare(method.load_base(model_dir, spec, dtype=torch.float32, device="cpu"), spec)
    # peft starts LoRA's B at zero: make the adapter matter, so its gradients are compared too.
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    return model


def _examples(lengths: list[int], seed: int = 0) -> list[Encoded]:
    """Examples of these lengths whose first half is an unscored prompt."""
    generator = torch.Generator().manual_seed(seed)
    out: list[Encoded] = []
    for n in lengths:
        ids = torch.randint(10, 400, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]})
    return out


def _loss_and_grads(
    module: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[float, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module(**step_inputs(batch)).loss
    loss.backward()
    inner = module.model if isinstance(module, step.CausalLMLoss) else module
    grads = {name: p.grad.clone() for name, p in inner.named_parameters() if p.grad is not None}
    return float(loss), grads


def _assert_same(a: tuple[float, dict[str, torch.Tensor]], b: tuple[float, dict[str, torch.Tensor]]) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_cross_entropy_equals_the_plain_loss_and_its_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::4] = IGNORE_INDEX
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX)
    plain.backward()
    expected = (float(plain), hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    monkeypatch.setattr(step, "LOGITS_PER_CHUNK", 50 * 8)  # chunks of 8 tokens: 5 chunks, the last short
    chunked = step.chunked_cross_entropy(hidden, weight, targets)
    (chunked * 3).backward()  # an upstream gradient is applied too
    assert float(chunked) == pytest.approx(expected[0], rel=1e-6)
    torch.testing.assert_close(hidden.grad, 3 * expected[1])
    torch.testing.assert_close(weight.grad, 3 * expected[2])
    # Nothing to score: a zero loss, not NaN.
    none = torch.full((37,), IGNORE_INDEX)
    assert float(step.chunked_cross_entropy(hidden, weight, none)) == 0.0


@pytest.mark.parametrize("name", ["lora", "full"])
def test_the_fused_loss_equals_the_models_own(
    tiny_model_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_model_dir, name)
    wrapped = step.CausalLMLoss(model)
    assert wrapped.fused
    batch = collate(_examples([9, 14, 5]), pad_id=0)
    own = _loss_and_grads(model, batch)
    monkeypatch.setattr(step, "LOGITS_PER_CHUNK", len(model.get_output_embeddings().weight) * 7)
    _assert_same(_loss_and_grads(wrapped, batch), own)


def test_soft_prompts_keep_their_own_loss(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir, "prompt_tuning", num_virtual_tokens=4)
    wrapped = step.CausalLMLoss(model)
    assert not wrapped.fused
    batch = collate(_examples([9, 14]), pad_id=0)
    assert float(wrapped(**batch).loss) == pytest.approx(float(model(**batch).loss))


@pytest.mark.parametrize("fused", [True, False])
def test_a_packed_batch_has_the_loss_and_gradients_of_the_padded_one(
    tiny_model_dir: Path, fused: bool
) -> None:
    model = _model(tiny_model_dir, "lora")
    examples = _examples([30, 7, 12, 19, 25, 3])
    padded = collate(examples, pad_id=0)
    packed = collate_packed(examples, pad_id=0, width=40)
    # 96 tokens in rows of 40 at most: 3 rows instead of 6 padded to 30.
    assert packed["input_ids"].shape[0] == 3 and packed["input_ids"].shape[1] <= 40
    assert input_tokens(packed) == input_tokens(padded) == 96
    assert scored_tokens(packed["labels"]) == scored_tokens(padded["labels"])
    wrapped = step.CausalLMLoss(model)
    wrapped.fused = fused  # False: the model computes its own loss
    _assert_same(_loss_and_grads(wrapped, packed), _loss_and_grads(wrapped, padded))


def test_packing_without_boundaries_would_differ(tiny_model_dir: Path) -> None:
    """The check above has teeth: the same rows with positions running on attend across examples."""
    model = _model(tiny_model_dir, "lora")
    examples = _examples([30, 7, 12, 19, 25, 3])
    packed = collate_packed(examples, pad_id=0, width=40)
    running = {
        **packed,
        "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]),
    }
    wrapped = step.CausalLMLoss(model)
    with torch.no_grad():
        assert (
            abs(float(wrapped(**step_inputs(running)).loss) - float(wrapped(**step_inputs(packed)).loss))
            > 1e-3
        )


def step_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: batch[key] for key in step.MODEL_INPUTS if key in batch}


def test_an_example_longer_than_a_packed_row_is_refused() -> None:
    with pytest.raises(ValueError, match="41 tokens does not fit a packed row of 40"):
        collate_packed(_examples([41]), pad_id=0, width=40)


def test_gradient_checkpointing_keeps_loss_and_gradients(tiny_model_dir: Path) -> None:
    batch = collate_packed(_examples([30, 7, 12, 19]), pad_id=0, width=40)
    plain = _loss_and_grads(step.CausalLMLoss(_model(tiny_model_dir)), batch)
    model = _model(tiny_model_dir)
    step.apply_options(model, HyperParams(gradient_checkpointing=True))
    assert step.hf_model(model).is_gradient_checkpointing
    _assert_same(_loss_and_grads(step.CausalLMLoss(model), batch), plain)


@pytest.mark.slow
def test_compiled_blocks_keep_the_loss(tiny_model_dir: Path) -> None:
    batch = collate(_examples([30, 7, 12]), pad_id=0)
    plain = _loss_and_grads(step.CausalLMLoss(_model(tiny_model_dir)), batch)
    model = _model(tiny_model_dir)
    step.apply_options(model, HyperParams(compile=True))
    assert len(step.decoder_blocks(model)) == 2
    compiled = _loss_and_grads(step.CausalLMLoss(model), batch)
    assert compiled[0] == pytest.approx(plain[0], rel=1e-4)
    for name in plain[1]:
        torch.testing.assert_close(compiled[1][name], plain[1][name], rtol=1e-3, atol=1e-5, msg=name)


def test_an_optimizer_step_over_micro_batches_trains_the_adapter(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    module = step.CausalLMLoss(model)
    trainable = [p for p in module.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor("constant", warmup_steps=0, total_steps=2)
    )
    batches = [collate_packed(_examples([20, 9], seed=s), pad_id=0, width=32) for s in (1, 2)]
    stats = step.optimizer_step(
        module,
        batches,
        optimizer=optimizer,
        scheduler=scheduler,
        trainable=trainable,
        device=torch.device("cpu"),
        max_grad_norm=1.0,
    )
    assert stats.tokens == 58 and stats.scored == sum(scored_tokens(b["labels"]) for b in batches)
    assert stats.loss_sum > 0
    assert all(p.grad is None for p in trainable)  # zeroed for the next step
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainable, strict=True))


def test_spec_options_that_cannot_work_are_refused() -> None:
    base = {"base_model": "m", "data": {"train": "d.jsonl"}, "output": {"adapter": "a"}}
    with pytest.raises(ConfigError, match="packing does not apply to 'prompt_tuning'"):
        parse_spec({**base, "method": {"name": "prompt_tuning"}, "hyperparameters": {"packing": True}})
    with pytest.raises(ConfigError, match="fsdp supports full, lora, not 'qlora'"):
        parse_spec({**base, "method": {"name": "qlora"}, "scaling": {"strategy": "fsdp"}})
    with pytest.raises(ConfigError, match=r"scaling\.strategy"):
        parse_spec({**base, "method": {"name": "lora"}, "scaling": {"strategy": "zero3"}})
    spec = parse_spec({**base, "method": {"name": "lora"}, "scaling": {"strategy": "fsdp"}})
    assert spec.scaling.strategy == "fsdp" and not spec.hyperparameters.packing


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_a_tiny_model_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        str(ROOT / "bench/train_gpu.py"),
        "--tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert {row["method"] for row in rows} == {"lora", "qlora", "full"}
    for row in rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1, row
    assert "tokens/s" in proc.stdout and "MFU" in proc.stdout
