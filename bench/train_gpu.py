"""The model step near the hardware limit: tokens/s and model FLOP utilisation, old step against new.

    .venv/bin/python bench/train_gpu.py                  # CUDA: the 1.2B Llama of issue 14, 8 x 2,048
    .venv/bin/python bench/train_gpu.py --tiny           # CPU: a tiny Llama (what tests/train runs)
    .venv/bin/python bench/train_gpu.py --tiny --min-length 64 --variants old new

Each row trains one method (LoRA r=8 on q/k/v/o, QLoRA r=8, full fine-tuning) with one variant of
the step, through the code `train_loop_per_worker` runs: the method's `load_base` and `prepare`,
`step.apply_options`, `step.CausalLMLoss` and `step.optimizer_step` (AdamW, clipping, schedule),
on random weights and random tokens, one process, no Ray. Variants:

- `old`: the step before issue 14: the model's own loss over full fp32 logits, padded batches;
- `chunked`: the chunked cross-entropy (no full logits), padded batches;
- `new`: chunked cross-entropy and packed batches (what `hyperparameters.packing: true` runs);
- `compiled`: `new` with every decoder block compiled (`hyperparameters.compile: true`);
- `checkpointed`: `new` with gradient checkpointing (memory for compute: its MFU counts no recompute).

Throughput counts real input tokens (padding excluded). Model FLOPs per token: 6 N for full
fine-tuning and 4 N + 6 N_adapter for a frozen base (forward plus input gradients, no weight
gradients), N = the weights of every linear layer including the head (embedding lookups are free),
plus attention 12 L d s per token for a sequence of s tokens (forward and backward of QK^T and AV,
counted whole as PaLM does). MFU divides by `--peak-tflops`: 989 (H200 dense bf16) on CUDA; on a
CPU the best fp32 rate of 1024^3 matmuls measured just before, a reachable rate, not a datasheet
peak. Peak memory is CUDA's max allocated; on a CPU it is not measured.

A script, not a test: speed is never asserted. Every row is measured in one run, ratios to `old`
of the same method are printed at the end, and written as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VARIANTS = ("old", "chunked", "new", "compiled", "checkpointed")
# The 1.2B configuration of issue 14 (Llama 3.2 1B's shape, random weights): 1.24B parameters.
LARGE = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}
H200_BF16_TFLOPS = 989.0


@dataclass
class Row:
    """One measured (method, variant)."""

    method: str
    variant: str
    tokens_per_s: float
    mfu: float
    step_ms: float
    rows: float  # batch rows per step (packing makes fewer)
    peak_gib: float | None
    loss: float


def build_model(dest: Path, shape: dict[str, int], device: str) -> Path:
    """A random-weight Llama folder (bf16 on disk for the large one) that every method loads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=500000.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    dtype = torch.bfloat16 if shape["hidden_size"] >= 1024 else torch.float32
    model.to(dtype).save_pretrained(dest, safe_serialization=True)
    return dest


def examples(
    count: int, *, min_length: int, max_length: int, vocab: int, seed: int
) -> list[dict[str, list[int]]]:
    """Random token sequences with lengths uniform in [min_length, max_length], loss on every token."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=generator).tolist()
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": ids})
    return out


def matmul_flops(model: Any) -> tuple[int, int]:
    """(weights of frozen linear layers, weights of trainable ones); a tied head counts as a linear layer."""
    import torch

    frozen = trainable = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Embedding) or weight is None or weight.ndim != 2:
            continue
        quant_state = getattr(weight, "quant_state", None)
        count = quant_state.shape.numel() if quant_state is not None else weight.numel()
        if weight.requires_grad:
            trainable += count
        else:
            frozen += count
    return frozen, trainable


def flops_per_step(model: Any, shape: dict[str, int], lengths: Sequence[int], full: bool) -> float:
    """Model FLOPs of one step over sequences of these lengths (module docstring)."""
    frozen, trainable = matmul_flops(model)
    dense = 6 * (frozen + trainable) if full else 4 * frozen + 6 * trainable
    tokens = sum(lengths)
    attention = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * sum(n * n for n in lengths)
    return dense * tokens + attention


def measure(
    args: argparse.Namespace,
    model_dir: Path,
    shape: dict[str, int],
    method_name: str,
    variant: str,
    peak: float,
) -> Row:
    """Train `args.steps` measured steps (after `args.warmup`) of one method with one step variant."""
    import torch

    from tuneloop.platform.spec import HyperParams, MethodSpec
    from tuneloop.train import methods
    from tuneloop.train.batches import collate_packed
    from tuneloop.train.schedule import lr_factor
    from tuneloop.train.step import CausalLMLoss, apply_options, optimizer_step
    from tuneloop.train.tokenize import collate

    device = torch.device(args.device)
    method = methods.get(method_name)
    spec = MethodSpec.model_validate({"name": method_name, **({"rank": 8} if method_name != "full" else {})})
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu and method_name != "full" else torch.float32  # as the recipe does
    torch.manual_seed(0)
    model = method.prepare(method.load_base(model_dir, spec, dtype=dtype, device=device), spec)
    hp = HyperParams(
        packing=variant != "old" and variant != "chunked",
        compile=variant == "compiled",
        gradient_checkpointing=variant == "checkpointed",
    )
    apply_options(model, hp)
    model.train()
    module = CausalLMLoss(model)
    module.fused = module.fused and variant != "old"
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor("constant", warmup_steps=0, total_steps=1)
    )
    batch_size = args.full_batch_size if method_name == "full" else args.batch_size
    steps = []
    for index in range(args.warmup + args.steps):
        data = examples(
            batch_size,
            min_length=args.min_length,
            max_length=args.seq_len,
            vocab=shape["vocab_size"],
            seed=index,
        )
        batch = collate_packed(data, 0, args.seq_len) if hp.packing else collate(data, 0)
        steps.append((batch, [len(item["input_ids"]) for item in data]))
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens = flops = rows = 0.0
    loss = 0.0
    started = time.perf_counter()
    for index, (batch, lengths) in enumerate(steps):
        if index == args.warmup:
            if on_gpu:
                torch.cuda.synchronize()
            tokens = flops = rows = 0.0
            started = time.perf_counter()
        stats = optimizer_step(
            module,
            [batch],
            optimizer=optimizer,
            scheduler=scheduler,
            trainable=trainable,
            device=device,
            max_grad_norm=1.0,
        )
        tokens += stats.tokens
        rows += batch["input_ids"].shape[0]
        flops += flops_per_step(model, shape, lengths, full=method_name == "full")
        loss = stats.loss_sum / max(stats.scored, 1)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    del model, module, optimizer
    if on_gpu:
        torch.cuda.empty_cache()
    return Row(
        method=method_name,
        variant=variant,
        tokens_per_s=tokens / seconds,
        mfu=flops / seconds / (peak * 1e12),
        step_ms=1000 * seconds / args.steps,
        rows=rows / args.steps,
        peak_gib=peak_gib,
        loss=loss,
    )


def cpu_matmul_tflops(trials: int = 5, seconds: float = 0.4) -> float:
    """The fp32 TFLOP/s of 1024^3 matmuls on this CPU now, the best of a few short trials (the MFU
    reference on CPUs: on a shared machine a single trial reads low whenever a neighbour is busy)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = 0.0
    for _ in range(trials):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        best = max(best, 2 * 1024**3 * count / (time.perf_counter() - started) / 1e12)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny Llama (CPU tests) instead of the 1.2B one"
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument(
        "--methods", nargs="+", default=["lora", "qlora", "full"], choices=["lora", "qlora", "full"]
    )
    parser.add_argument(
        "--variants", nargs="+", default=None, choices=VARIANTS, help="default: old new (+compiled on CUDA)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (LoRA, QLoRA)")
    parser.add_argument(
        "--full-batch-size", type=int, default=None, help="sequences per step, full fine-tuning"
    )
    parser.add_argument("--seq-len", type=int, default=None, help="longest sequence (2048; tiny: 256)")
    parser.add_argument("--min-length", type=int, default=None, help="shortest sequence (default: --seq-len)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    parser.add_argument("--peak-tflops", type=float, default=None, help="MFU reference (CUDA default: 989)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the shape's)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every row this often; keep the median")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = args.device.startswith("cuda")
    shape = {**(TINY if args.tiny else LARGE), **({"vocab_size": args.vocab} if args.vocab else {})}
    args.seq_len = args.seq_len or (256 if args.tiny else 2048)
    args.min_length = args.min_length or args.seq_len
    args.full_batch_size = args.full_batch_size or (args.batch_size if args.tiny else 4)
    variants = args.variants or (["old", "new", "compiled"] if on_gpu else ["old", "new"])
    if on_gpu:
        peak, peak_note = args.peak_tflops or H200_BF16_TFLOPS, "TFLOP/s peak (bf16 dense)"
    else:
        peak = args.peak_tflops or cpu_matmul_tflops()
        peak_note = "TFLOP/s given" if args.peak_tflops else "TFLOP/s: a measured fp32 1024^3 matmul"
    where = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{'tiny' if args.tiny else '1.2B'} Llama on {where}; MFU of {peak:.3f} {peak_note}", flush=True)
    print(
        f"batch {args.batch_size} (full: {args.full_batch_size}) x {args.min_length}-{args.seq_len} tokens, "
        f"{args.warmup} warm-up + {args.steps} measured steps, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    measured: dict[tuple[str, str], list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-gpu-") as tmp:
        model_dir = build_model(Path(tmp) / "model", shape, args.device)
        # Rounds alternate every row, so a change in the machine's load reaches all of them alike.
        for round_index in range(args.rounds):
            for method_name in args.methods:
                for variant in variants:
                    row = measure(args, model_dir, shape, method_name, variant, peak)
                    measured.setdefault((method_name, variant), []).append(row)
                    print(
                        f"round {round_index + 1}: {method_name:>6} {variant:<12} "
                        f"{row.tokens_per_s:>10.0f} tokens/s  MFU {row.mfu:.3f}",
                        flush=True,
                    )
    results = [sorted(rows, key=lambda r: r.tokens_per_s)[len(rows) // 2] for rows in measured.values()]

    head = f"{'method':<6} {'variant':<12} {'tokens/s':>10} {'MFU':>6} {'step ms':>9} {'rows':>5} "
    print(f"\n{head}{'peak GiB':>8} {'loss':>7}  vs old (median of {args.rounds} round(s))")
    for row in results:
        old = next((r for r in results if r.method == row.method and r.variant == "old"), None)
        ratio = f"{row.tokens_per_s / old.tokens_per_s:.2f}" if old else "-"
        peak_gib = f"{row.peak_gib:.1f}" if row.peak_gib is not None else "-"
        print(
            f"{row.method:<6} {row.variant:<12} {row.tokens_per_s:>10.0f} {row.mfu:>6.3f} "
            f"{row.step_ms:>9.1f} {row.rows:>5.1f} {peak_gib:>8} {row.loss:>7.3f}  {ratio}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        setup = {k: v for k, v in vars(args).items() if k != "json"}
        summary = {
            "setup": setup,
            "peak_tflops": peak,
            "device": where,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
