"""Training throughput: tuneloop's recipe on Ray Train (1 and 2 workers) against a plain PyTorch + peft loop.

    .venv/bin/python bench/train.py                      # SmolLM2-135M (pulled), the examples' chats
    .venv/bin/python bench/train.py --only plain --steps 5

Both sides train the same model with LoRA (r=8, alpha=16, attention projections), on the same
training split of the same data, tokenised the same way (tuneloop's data layer), with the same batch
size per worker and sequence length, in fp32 on the CPU. Throughput is input tokens (non-padding)
per second over the optimizer steps after `--warmup` steps, summed over workers. With 2 workers each
worker gets half of `--threads` CPUs, so both recipe runs use the machine the plain loop uses.

The plain loop is what a careful engineer writes by hand: one process, AdamW, no Ray, no
checkpoints, no validation. The recipe runs as users run it (`tuneloop train`, a private local Ray,
a scratch registry and artifact store) and keeps its overheads (DDP, gradient clipping, reports,
the checkpoint at its one validation); the goal is at least 0.9 of the plain loop with 1 worker.

On a 2-core machine a 2-thread run is very sensitive to anything else using the CPU: Ray's own
processes alone (an idle private Ray) cut a 2-thread plain loop from ~213 to ~155 tokens/s here,
while a 1-thread loop lost nothing. `--threads 1 --workers 1` compares the loops without that effect.

A script, not a test: it takes minutes on a CPU. Everything is measured in one run; the table and
the ratios are printed at the end (and written as JSON with --json). The plain loop runs before and
after the recipe and the ratios use its mean: on a shared machine, a gap between the two (and the
load average printed beside each row) says how far to trust them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.9
# A progress line of `tuneloop train` (train/progress.py): "[tag] step 40/120 ... tokens/s 5321 ...".
PROGRESS = re.compile(r"\] step (\d+)/(\d+) .*?tokens/s (\d+)")


@dataclass
class Result:
    """One measured configuration."""

    name: str
    workers: int
    steps: int  # optimizer steps measured
    tokens_per_s: float  # input tokens per second, summed over workers; 0 when not measured
    note: str = ""
    load: float = 0.0  # the machine's 1-minute load average when the measurement ended


@dataclass(frozen=True)
class Setup:
    """What both sides share."""

    model_dir: Path
    data: Path
    batch_size: int
    max_length: int
    steps: int
    warmup: int
    learning_rate: float
    threads: int


def resolve_model(name: str) -> Path:
    """A model folder, or a name pulled by `tuneloop models pull` into TUNELOOP_MODELS_DIR."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    from tuneloop.platform import settings

    pulled = settings.TUNELOOP_MODELS_DIR.get() / name
    if not (pulled / "config.json").exists():
        sys.exit(f"bench: no folder {name!r} and none pulled at {pulled}: `tuneloop models pull {name}`")
    return pulled


def encode_train_split(setup: Setup) -> tuple[list[Any], int]:
    """The training split, tokenised as `tuneloop train` does; returns (inputs, pad id)."""
    from transformers import AutoTokenizer

    from tuneloop.platform.data import make_splits
    from tuneloop.platform.spec import DataSpec
    from tuneloop.train.evaluate import pad_token_id
    from tuneloop.train.tokenize import encode_splits

    data = DataSpec(train=setup.data, max_length=setup.max_length, min_examples=1)
    tokenizer = AutoTokenizer.from_pretrained(str(setup.model_dir))
    encoded, _ = encode_splits(make_splits(data, "sft"), tokenizer, data, "sft")
    return encoded["train"], pad_token_id(tokenizer)


def plain_loop(setup: Setup, when: str = "") -> Result:
    """The baseline: a hand-written single-process LoRA loop with peft, no Ray."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.train.tokenize import collate

    torch.manual_seed(0)
    torch.set_num_threads(setup.threads)
    inputs, pad_id = encode_train_split(setup)
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=setup.learning_rate)
    generator = torch.Generator().manual_seed(0)
    order: list[int] = []
    tokens, started = 0, time.perf_counter()
    for step in range(setup.warmup + setup.steps):
        if step == setup.warmup:
            tokens, started = 0, time.perf_counter()
        if len(order) < setup.batch_size:  # reshuffle once an epoch's examples are used up
            order += torch.randperm(len(inputs), generator=generator).tolist()
        batch = collate([inputs[i] for i in order[: setup.batch_size]], pad_id)
        del order[: setup.batch_size]
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    note = f"{tokens} tokens in {seconds:.1f} s, {setup.threads} threads"
    name = f"plain PyTorch + peft{when}"
    return Result(name, 1, setup.steps, tokens / seconds, note, os.getloadavg()[0])


def recipe_run(setup: Setup, workers: int, scratch: Path) -> Result:
    """tuneloop's recipe with `workers` Ray Train workers: `tuneloop train` on a spec of the same setup.

    Its rate comes from the progress lines rank 0 prints: each covers the steps since the previous
    one, with their tokens/s summed over workers. Lines whose window starts before `--warmup` steps,
    and the last one (it holds the final validation), are left out; the rest combine as total tokens
    over total time (a step-weighted harmonic mean: the steps of a run carry similar token counts).
    """
    import yaml

    from tuneloop.platform import settings

    name = f"tuneloop recipe, {workers} worker(s)"
    if setup.threads % workers:
        return Result(name, workers, 0, 0.0, f"--threads {setup.threads} does not split over {workers}")
    total_steps = setup.warmup + setup.steps + 1
    spec = {
        "base_model": str(setup.model_dir),
        "method": {"name": "lora", "rank": 8, "alpha": 16},
        "task": "sft",
        "data": {"train": str(setup.data), "max_length": setup.max_length, "min_examples": 1},
        "hyperparameters": {
            "learning_rate": setup.learning_rate,
            "batch_size": setup.batch_size,
            "max_steps": total_steps,
            "eval_every": total_steps,  # validate before the first step and at the end only
            "schedule": "constant",
        },
        "early_stopping": None,
        "scaling": {"num_workers": workers, "cpus_per_worker": setup.threads // workers, "max_failures": 0},
        "output": {"adapter": f"bench-{workers}w"},
    }
    home = scratch / f"home-{workers}w"
    home.mkdir(parents=True, exist_ok=True)
    spec_path = home / "bench.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = settings.child_env({"TUNELOOP_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    for var in ("RAY_ADDRESS", "TUNELOOP_RAY_DIR", "TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS"):
        env.pop(var, None)  # a private local Ray (no embedded head), the scratch registry and store
    argv = [str(Path(sys.executable).with_name("tuneloop")), "train", str(spec_path)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    log = home / "train.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        return Result(name, workers, 0, 0.0, f"failed (see {log}): {tail[:300]}")
    windows = progress_windows(proc.stdout)
    measured = [(steps, rate) for first, steps, rate in windows[:-1] if first >= setup.warmup and rate > 0]
    steps = sum(n for n, _ in measured)
    if not steps:
        return Result(name, workers, 0, 0.0, f"no progress lines after the warm-up (see {log})")
    rate = steps / sum(n / r for n, r in measured)
    note = f"{len(measured)} progress windows, {setup.threads} CPUs"
    return Result(name, workers, steps, rate, note, os.getloadavg()[0])


def progress_windows(stdout: str) -> list[tuple[int, int, float]]:
    """(first step, steps, tokens/s) of each progress line of a `tuneloop train` run, in order."""
    windows: list[tuple[int, int, float]] = []
    last = 0
    for match in PROGRESS.finditer(stdout):
        step, rate = int(match.group(1)), float(match.group(3))
        if step > last:
            windows.append((last, step - last, rate))
            last = step
    return windows


def report(results: Sequence[Result], setup: Setup) -> dict[str, Any]:
    """Print the table and the ratios to the plain loop; return them for --json."""
    print(
        f"\nmodel {setup.model_dir.name}, LoRA r=8, batch {setup.batch_size} per worker, max_length "
        f"{setup.max_length}, {setup.warmup} warm-up steps, {setup.threads} CPU threads in all"
    )
    print(f"{'configuration':<36} {'workers':>7} {'steps':>6} {'tokens/s':>9} {'load':>5}  note")
    for r in results:
        print(f"{r.name:<36} {r.workers:>7} {r.steps:>6} {r.tokens_per_s:>9.1f} {r.load:>5.1f}  {r.note}")
    plains = [r.tokens_per_s for r in results if r.name.startswith("plain") and r.tokens_per_s]
    ratios: dict[str, float] = {}
    if not plains:
        return {"results": [asdict(r) for r in results], "ratios": ratios}
    plain = sum(plains) / len(plains)
    if max(plains) > 1.2 * min(plains):
        moved = f"{plains[0]:.1f} to {plains[-1]:.1f} tokens/s"
        print(f"WARNING: the plain loop moved from {moved} during the run (other load on the machine?)")
    for r in results:
        if not r.name.startswith("plain") and r.tokens_per_s:
            ratios[r.name] = r.tokens_per_s / plain
            print(f"ratio {r.name} / plain (mean of {len(plains)}): {ratios[r.name]:.2f}")
    one = next((v for k, v in ratios.items() if "1 worker" in k), None)
    if one is not None:
        print(f"goal >= {GOAL} with 1 worker: {'met' if one >= GOAL else 'NOT met'} ({one:.2f})")
    setup_record = {k: str(v) for k, v in asdict(setup).items()}
    return {"setup": setup_record, "results": [asdict(r) for r in results], "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model folder or pulled name")
    parser.add_argument("--data", type=Path, default=ROOT / "examples/data/juniper_chat.jsonl")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per worker per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument("--only", choices=["plain", "recipe"], help="measure one side only")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="recipe worker counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    setup = Setup(
        model_dir=resolve_model(args.model),
        data=args.data.resolve(),
        batch_size=args.batch_size,
        max_length=args.max_length,
        steps=args.steps,
        warmup=args.warmup,
        learning_rate=args.learning_rate,
        threads=args.threads,
    )
    results = []
    both = args.only is None
    if args.only != "recipe":
        results.append(plain_loop(setup, " (before)" if both else ""))
        print(f"plain loop: {results[-1].tokens_per_s:.1f} tokens/s", flush=True)
    if args.only != "plain":
        scratch = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
        print(f"recipe runs: scratch registry, artifacts and logs in {scratch}", flush=True)
        for workers in args.workers:
            results.append(recipe_run(setup, workers, scratch))
            print(f"recipe, {workers} worker(s): {results[-1].tokens_per_s:.1f} tokens/s", flush=True)
    if both:
        # Measured again after the recipe: on a shared machine a change in load shows up as a gap.
        results.append(plain_loop(setup, " (after)"))
        print(f"plain loop again: {results[-1].tokens_per_s:.1f} tokens/s", flush=True)
    summary = report(results, setup)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
