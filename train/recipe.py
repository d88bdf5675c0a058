"""The training recipe: the loop every Ray Train worker runs, and the Ray Train run around it.

The driver (`driver.py`) checks, records and publishes; this file is what trains. `build_trainer`
makes the Ray Train run of `train_loop_per_worker` for a spec's scaling (one per Ray Tune trial with
a search), and the loop reads top to bottom: load the base through the method, prepare it, wrap it
with its loss (`step.CausalLMLoss`) in DDP or FSDP (`scaling.strategy`, see `parallel.py`; gloo on
CPUs, NCCL on GPUs), AdamW with a warm-up schedule, gradient accumulation, each optimizer step
taken by `step.optimizer_step` (the code bench/train_gpu.py measures), validation every eval_every
steps with early stopping that all workers agree on, checkpoints at every validation, and resume
from `ray.train.get_checkpoint()` so that `FailureConfig(max_failures)` restarts a failed worker
group from its last checkpoint, on exactly the batches it had not yet seen.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform.spec import HyperParams, JobSpec, ScalingSpec
from tuneloop.train import methods

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from ray.train.torch import TorchTrainer

# Checkpoints kept per run: the latest holds the best weights too, one more covers a failed write.
CHECKPOINTS_KEPT = 2
# Gradient-norm clipping, the transformers Trainer's default: one bad batch cannot wreck an adapter.
MAX_GRAD_NORM = 1.0
# Progress reports between validations at most this often. Every `ray.train.report` is a barrier,
# and Ray Train's controller takes reports from a queue of one that it polls every 2 s: reporting
# every step would cap training at one step per 2 s on fast models.
REPORT_EVERY_S = 5.0


def build_trainer(
    loop_config: dict[str, Any],
    *,
    scaling: ScalingSpec,
    storage_path: str,
    name: str,
    callbacks: list[Any],
) -> TorchTrainer:
    """The Ray Train run of `train_loop_per_worker` for a spec's scaling, checkpointing under storage."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
            use_gpu=scaling.use_gpu,
        ),
        # mypy reads Train v1's RunConfig; Ray 2.60 runs Train v2, whose RunConfig has logging_config.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def trial_trainer(
    trial_id: str,
    overrides: dict[str, Any],
    callbacks: list[Any],
    *,
    loop_config: dict[str, Any],
    scaling: ScalingSpec,
    storage_path: str,
    search_name: str,
    curves_store: str | None = None,
) -> TorchTrainer:
    """The Ray Train run of one Ray Tune trial: the same loop with some hyper-parameters replaced;
    its curves go to the job's under `trial <id>` when `curves_store` (the artifact store) is given."""
    from tuneloop.train.progress import TrainingCurves
    from tuneloop.train.tune import run_name

    tag = f"trial {trial_id}"
    config = {**loop_config, "overrides": overrides, "tag": tag}
    if curves_store is not None:
        callbacks = [*callbacks, TrainingCurves(curves_store, loop_config["job_id"], tag)]
    return build_trainer(
        config,
        scaling=scaling,
        storage_path=storage_path,
        name=run_name(search_name, trial_id),
        callbacks=callbacks,
    )


def planned_steps(hp: HyperParams, train_inputs: int, workers: int) -> int:
    """Optimizer steps a run makes: max_steps, else epochs over each worker's padded shard."""
    batches = math.ceil(math.ceil(train_inputs / workers) / hp.batch_size)
    per_epoch = max(1, math.ceil(batches / hp.gradient_accumulation))
    return hp.max_steps or max(1, math.ceil(hp.epochs * per_epoch))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The training loop Ray Train runs on every worker; rank 0 reports checkpoints and prints."""
    import os
    import time

    import ray
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint, CheckpointUploadMode

    from tuneloop.train import parallel
    from tuneloop.train.batches import loss_sums, micro_batches, shard_loader
    from tuneloop.train.dist import all_reduce_sum, broadcast_flag
    from tuneloop.train.progress import emit, progress_line, quiet_worker_logs
    from tuneloop.train.schedule import lr_factor
    from tuneloop.train.state import (
        load_trainable,
        read_checkpoint,
        save_checkpoint,
        staging_dir,
        trainable_snapshot,
        warm_start,
    )
    from tuneloop.train.step import CausalLMLoss, apply_options, optimizer_step
    from tuneloop.train.stopping import EarlyStopper

    # -- what to train, and where
    quiet_worker_logs()
    spec = JobSpec.model_validate(config["spec"])
    hp = HyperParams.model_validate({**spec.hyperparameters.model_dump(), **config["overrides"]})
    tag = config["tag"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    method = methods.get(spec.method.name)
    # On a GPU a frozen base (adapters, soft prompts) is held in bf16; weights that train stay fp32
    # and compute runs under bf16 autocast. On a CPU everything is fp32.
    frozen_base = method.serving != "engine"
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu and frozen_base and torch.cuda.is_bf16_supported() else torch.float32
    torch.manual_seed(hp.seed)
    model = method.prepare(
        method.load_base(Path(config["model_dir"]), spec.method, dtype=dtype, device=device), spec.method
    )
    if spec.output.init_from:  # continue from a stored version's weights (a checkpoint still wins)
        warm_start(method, model, spec.output.init_from)
    apply_options(model, hp)
    model.train()
    torch.manual_seed(hp.seed + rank)  # same initial weights everywhere, different dropout per worker
    n_trainable, n_total = method.trainable_parameters(model)

    # -- data: this worker's shard of train; validation is split across workers and summed
    data = ray.get(config["data"])
    pad_id = config["pad_id"]
    loader = shard_loader(
        data["train"],
        batch_size=hp.batch_size,
        rank=rank,
        world=world,
        seed=hp.seed,
        pad_id=pad_id,
        packed_width=spec.data.max_length if hp.packing else None,
    )
    validation = data["validation"][rank::world]
    total_steps = planned_steps(hp, len(data["train"]), world)

    # -- resume, part 1: the weights go in before DDP/FSDP wraps the model
    state: dict[str, Any] = {
        "step": 0,
        "micro_batches": 0,
        "tokens": 0,
        "restarts": 0,
        "resumed_from_step": 0,
        "initial_val_loss": None,
    }
    best: dict[str, torch.Tensor] = {}
    resumed_from = ray.train.get_checkpoint()
    saved = None
    if resumed_from is not None:
        with resumed_from.as_directory() as directory:
            saved = read_checkpoint(Path(directory))
        load_trainable(model, saved.weights)
        best = saved.best if rank == 0 else {}
        for key in ("step", "micro_batches", "tokens", "initial_val_loss"):
            state[key] = saved.state[key]
        state["restarts"] = saved.state["restarts"] + 1
        state["resumed_from_step"] = saved.state["step"]

    # -- DDP (gradients averaged) or FSDP (everything sharded) around the model and its loss
    strategy = spec.scaling.strategy
    module = parallel.wrap(CausalLMLoss(model), model, strategy)
    trainable = [param for param in module.parameters() if param.requires_grad]

    # -- optimiser, schedule, early stopping; resume, part 2: their state
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(hp.schedule, warmup_steps=hp.warmup_steps, total_steps=total_steps)
    )
    stopping = spec.early_stopping
    stopper = EarlyStopper(
        patience=stopping.patience if stopping else None, min_delta=stopping.min_delta if stopping else 0.0
    )
    if saved is not None:
        parallel.load_optimizer_state(module, optimizer, saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        stopper.load_state_dict(saved.state["stopper"])

    # Checkpoints are written here, then uploaded by Ray in the background (see `staging_dir`).
    staging = staging_dir(config["job_id"]) / context.get_experiment_name()
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)

    # Under FSDP every forward is a collective: each worker runs as many validation batches as the
    # largest shard needs. Under DDP each scores its own shard on the unwrapped module.
    sharded = strategy == "fsdp"
    scorer = module if sharded else CausalLMLoss(model)
    validation_batches = math.ceil(math.ceil(len(data["validation"]) / world) / hp.batch_size)

    def validate() -> float:
        local = loss_sums(
            scorer,
            validation,
            batch_size=hp.batch_size,
            pad_id=pad_id,
            device=device,
            batches=validation_batches if sharded else None,
        )
        total, count = all_reduce_sum(local)
        return total / count if count else math.nan

    if rank == 0:
        shape = f"{hp.batch_size} x {hp.gradient_accumulation} x {world}"
        emit(
            f"[{tag}] {world} worker(s) on {device} ({strategy}): {spec.method.name} trains "
            f"{n_trainable:,} of {n_total:,} parameters; {total_steps} steps of {shape} examples"
            + (f"; resumed at step {state['step']} (restart {state['restarts']})" if resumed_from else "")
        )
    if state["initial_val_loss"] is None:
        initial = validate()
        state["initial_val_loss"] = initial
        stopper.update(0, initial)
        best = trainable_snapshot(model, keep=rank == 0)
        if rank == 0:
            emit(f"[{tag}] step 0/{total_steps} val_loss {initial:.4f} (before training)")

    # -- the loop
    batches = micro_batches(loader, state["micro_batches"])
    step, stop = state["step"], False
    # Per optimizer step since the last report: [loss sum, scored tokens] (summed over workers at the
    # report, in the one collective it makes anyway) and rank 0's (step, lr, gradient norm): the curves.
    window_sums: list[float] = []
    window_steps: list[tuple[int, float, float]] = []
    window_tokens = 0
    window_start = last_report = run_start = time.monotonic()
    run_start_step = step
    while step < total_steps and not stop:
        # One optimizer step over `gradient_accumulation` micro-batches (step.py, as the benchmark runs it).
        lr = float(scheduler.get_last_lr()[0])  # the rate this step uses (the curves record it)
        stats = optimizer_step(
            module,
            [next(batches) for _ in range(hp.gradient_accumulation)],
            optimizer=optimizer,
            scheduler=scheduler,
            trainable=trainable,
            device=device,
            max_grad_norm=MAX_GRAD_NORM,
        )
        window_sums += [stats.loss_sum, stats.scored]
        window_steps.append((step + 1, lr, stats.grad_norm))
        window_tokens += stats.tokens
        step += 1
        state["micro_batches"] += hp.gradient_accumulation
        if config["exit_at_step"] == step and rank == world - 1 and resumed_from is None:
            # Test hook. Wait until Ray has registered the checkpoints reported so far (they upload in
            # the background), so the test proves recovery from them rather than racing their uploads.
            ray.train.get_all_reported_checkpoints(timeout_s=120)
            emit(f"[{tag}] worker {rank} exits at step {step} (TUNELOOP_TEST_WORKER_EXIT_AT_STEP)")
            os._exit(1)

        # Validate every eval_every steps and at the end; rank 0 decides whether to stop.
        evaluated = step % hp.eval_every == 0 or step == total_steps
        if evaluated:
            if stopper.update(step, validate()):
                best = trainable_snapshot(model, keep=rank == 0)
            stop = broadcast_flag(stopper.should_stop) and step < total_steps
        if not (evaluated or broadcast_flag(rank == 0 and time.monotonic() - last_report >= REPORT_EVERY_S)):
            continue

        # Report (every worker must): metrics summed over workers since the last report.
        tokens_total, *sums = all_reduce_sum([window_tokens, *window_sums])
        loss_total, scored_total = sum(sums[0::2]), sum(sums[1::2])
        now = time.monotonic()
        state["tokens"] += int(tokens_total)
        curve = [
            {"step": s, "loss": lsum / scored if scored else math.nan, "lr": lr, "grad_norm": norm}
            for (s, lr, norm), lsum, scored in zip(window_steps, sums[0::2], sums[1::2], strict=True)
        ]
        metrics = {
            "step": step,
            "total_steps": total_steps,
            "epoch": state["micro_batches"] / len(loader),
            "loss": loss_total / scored_total if scored_total else math.nan,
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": tokens_total / max(now - window_start, 1e-9),
            "grad_norm": window_steps[-1][2],
            # Remaining steps at this run's pace so far (validations included).
            "eta_s": (now - run_start) / max(step - run_start_step, 1) * (total_steps - step),
            "curve": curve,
            "val_loss": stopper.history[-1][1],
            "best_val_loss": stopper.best,
            "best_step": stopper.best_step,
            "evaluated": evaluated,
            "final": stop or step == total_steps,
            "stopped_early": stop,
            "restarts": state["restarts"],
            "resumed_from_step": state["resumed_from_step"],
            "world_size": world,
        }
        window_sums, window_steps, window_tokens = [], [], 0
        window_start = last_report = now
        checkpoint: Checkpoint | None = None
        if evaluated:  # gathered on every worker under FSDP; rank 0 writes
            weights = trainable_snapshot(model, keep=rank == 0)
            optimizer_state = parallel.optimizer_state(module, optimizer, keep=rank == 0)
        if rank == 0:
            emit(progress_line(tag, metrics))
            if evaluated:  # Ray uploads it in the background and deletes this folder afterwards
                directory = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=staging))
                saved_state = {
                    **state,
                    "step": step,
                    "total_steps": total_steps,
                    "stopper": stopper.state_dict(),
                    "stopped_early": stop,
                    "world_size": world,
                    "strategy": strategy,
                    "hyperparameters": hp.model_dump(mode="json"),
                }
                save_checkpoint(
                    directory,
                    weights=weights,
                    best=best,
                    optimizer=optimizer_state,
                    scheduler=scheduler,
                    state=saved_state,
                )
                checkpoint = Checkpoint.from_directory(str(directory))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)
