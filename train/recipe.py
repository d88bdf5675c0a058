"""The training recipe: one job spec in, one candidate version out. It reads top to bottom.

The driver (`run`, in the process `tuneloop train` runs in, the Ray job's driver):

1. Load the spec and check everything that can be checked without compute, all at once: the spec,
   the base model, the search space, the lineage the registry must accept, every data file.
2. Split (deterministic, duplicate-free, hashed) and tokenise the data. Nothing has started yet:
   a bad spec or bad data is one error listing every problem, and no job row, run or artifact.
3. Record the job in the registry and join Ray (or start a private local Ray, see `cluster.py`).
4. Train with Ray Train's `TorchTrainer`, which runs `train_loop_per_worker` (below) on every
   worker; with a search, one such run per Ray Tune trial (`tune.py`), the best one kept.
5. Rebuild the best-validation weights of the kept run from its checkpoint in the method's own
   format, and score them on the held-out test split beside the base model.
6. Publish: artifact store + registry version (status candidate); close the job.

The per-worker loop: load the base through the method, prepare it, wrap it with its loss
(`step.CausalLMLoss`) in DDP or FSDP (`scaling.strategy`, see `parallel.py`; gloo on CPUs, NCCL on
GPUs), AdamW with a warm-up schedule, gradient accumulation, validation every eval_every
steps with early stopping that all workers agree on, each optimizer step taken by
`step.optimizer_step` (the code bench/train_gpu.py measures), checkpoints at every validation, and resume
from `ray.train.get_checkpoint()` so that `FailureConfig(max_failures)` restarts a failed worker
group from its last checkpoint, on exactly the batches it had not yet seen.
"""

from __future__ import annotations

import logging
import math
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError
from tuneloop.train import methods
from tuneloop.train.cluster import address_problems, ray_cluster
from tuneloop.train.data import DataError, encode_splits, make_splits
from tuneloop.train.errors import TrainingError
from tuneloop.train.preflight import base_model, lineage_problems
from tuneloop.train.spec import HyperParams, JobSpec, ScalingSpec, load_spec

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from ray.train.torch import TorchTrainer

    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)

# Checkpoints kept per run: the latest holds the best weights too, one more covers a failed write.
CHECKPOINTS_KEPT = 2
# Gradient-norm clipping, the transformers Trainer's default: one bad batch cannot wreck an adapter.
MAX_GRAD_NORM = 1.0
# Progress reports between validations at most this often. Every `ray.train.report` is a barrier,
# and Ray Train's controller takes reports from a queue of one that it polls every 2 s: reporting
# every step would cap training at one step per 2 s on fast models.
REPORT_EVERY_S = 5.0


@dataclass
class TrainOutcome:
    """What a job produced: its registry job, the new version, and how it got there."""

    job_id: str
    version: str  # adapter@N
    uri: str
    metrics: dict[str, float]
    training: dict[str, Any]
    hyperparameters: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)


def run(
    job: Path | JobSpec,
    *,
    job_id: str | None = None,
    registry: Registry | None = None,
    store: ArtifactStore | None = None,
    echo: Callable[[str], None] = print,
) -> TrainOutcome:
    """Run a whole fine-tuning job in this process (the Ray job driver) and publish its result."""
    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.registry import Registry
    from tuneloop.platform.registry.models import JobStatus
    from tuneloop.train import tune
    from tuneloop.train.evaluate import evaluate_result, format_table, pad_token_id
    from tuneloop.train.publish import export_checkpoint, publish
    from tuneloop.train.state import read_state, staging_dir, training_summary

    registry = registry or Registry()
    store = store or ArtifactStore()
    # A job recorded before it ran (`tuneloop jobs submit`) is closed as failed if it cannot start.
    submitted = job_id or settings.ray_job_submission_id()
    try:
        # -- 1. the spec, and every check that needs no compute, reported together
        spec = load_spec(job) if isinstance(job, Path) else job
        source = str(job) if isinstance(job, Path) else f"job spec for {spec.output.adapter!r}"
        problems: list[str] = []
        model_dir, base_ref = base_model(spec.base_model, problems)
        if spec.search is not None:
            problems += tune.space_problems(spec.search, spec.hyperparameters)
        problems += lineage_problems(registry, spec, base_ref)
        problems += address_problems()
        splits = None
        try:
            splits = make_splits(spec.data, spec.task)
        except DataError as exc:
            problems.append(str(exc))
        if problems or splits is None or model_dir is None:
            listed = "\n".join("- " + problem.replace("\n", "\n  ") for problem in problems)
            raise ConfigError(f"{source} cannot run; fix and resubmit (no training was started):\n{listed}")

        # -- 2. tokenise on the driver: workers get token ids, never files they may not be able to read
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per model load would bury the job log's progress lines
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source} cannot run: no usable tokenizer in {model_dir}: {exc}") from None
        encoded, token_stats = encode_splits(splits, tokenizer, spec.data, spec.task)
        pad_id = pad_token_id(tokenizer)
        data_hash = str(splits.stats["data_hash"])
        sizes = f"{len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test"
        echo(f"data: {sizes} examples, {token_stats['train_tokens']} train tokens, hash {data_hash[:12]}")
    except ConfigError as exc:  # DataError is one too
        _close_recorded_job(registry, submitted, str(exc))
        raise

    # -- 3. the registry job, and Ray
    job_id = job_id or _job_id(spec)
    # Only what the spec set: it validates again as it is (options of other methods are refused).
    spec_record = spec.model_dump(mode="json", exclude_unset=True)
    registry.start_job(job_id, spec.output.adapter, spec_record)
    echo(f"job {job_id}: {spec.method.name} {spec.task} on {base_ref} -> {spec.output.adapter}")
    registry.add_job_event(job_id, "job.started", f"training {spec.output.adapter} ({spec.method.name})")
    exit_at = settings.TUNELOOP_TEST_WORKER_EXIT_AT_STEP.get()
    if exit_at:
        log.warning(
            "TUNELOOP_TEST_WORKER_EXIT_AT_STEP=%d: a worker will exit at that step (testing only)", exit_at
        )
    storage = f"{store.root_url.rstrip('/')}/runs"
    trials: list[dict[str, Any]] = []
    try:
        with ray_cluster(echo):
            import ray

            loop_config = {
                "spec": spec_record,
                "overrides": {},
                "model_dir": str(model_dir),
                "data": ray.put({"train": encoded["train"], "validation": encoded["validation"]}),
                "pad_id": pad_id,
                "exit_at_step": exit_at,
                "job_id": job_id,
                "tag": job_id,
            }
            # -- 4. train: one Ray Train run, or one per Ray Tune trial
            if spec.search is None:
                from tuneloop.train.progress import RegistryEvents

                events = RegistryEvents(
                    registry.engine.url.render_as_string(hide_password=False), job_id, job_id
                )
                trainer = build_trainer(
                    loop_config, scaling=spec.scaling, storage_path=storage, name=job_id, callbacks=[events]
                )
                result = trainer.fit()
                if result.error is not None:
                    raise result.error
                checkpoint = result.checkpoint
                hyperparameters = spec.hyperparameters
                run_dirs = [job_id]
            else:
                search_name = f"{job_id}-search"
                echo(f"searching {spec.search.num_trials} trials over {', '.join(spec.search.space)}")
                searched = tune.run_search(
                    spec.search,
                    make_trainer=partial(
                        trial_trainer,
                        loop_config=loop_config,
                        scaling=spec.scaling,
                        storage_path=storage,
                        search_name=search_name,
                    ),
                    storage_path=storage,
                    name=search_name,
                    max_steps=planned_steps(
                        spec.hyperparameters, len(encoded["train"]), spec.scaling.num_workers
                    ),
                    eval_every=spec.hyperparameters.eval_every,
                    seed=spec.hyperparameters.seed,
                )
                trials = [trial.record() for trial in searched.trials]
                for trial in searched.trials:
                    message = (
                        f"trial {trial.trial_id} {trial.status} after {trial.steps} steps: best val_loss "
                        f"{trial.best_val_loss:.4f} at step {trial.best_step} with {trial.config}"
                    )
                    echo(message)
                    registry.add_job_event(job_id, "job.trial", message, trial.record())
                best = searched.best
                echo(f"best trial: {best.trial_id} {best.config}")
                checkpoint = searched.checkpoints[best.trial_id]
                hyperparameters = HyperParams.model_validate(
                    {**spec.hyperparameters.model_dump(), **best.config}
                )
                run_dirs = [search_name, *(tune.run_name(search_name, t.trial_id) for t in searched.trials)]
        if checkpoint is None:
            raise TrainingError(f"job {job_id}: training ended without a checkpoint to publish")

        with tempfile.TemporaryDirectory(prefix="tuneloop-export-") as tmp:
            # -- 5. the best weights, in the method's format, scored on the test split beside the base
            out_dir = Path(tmp) / "result"
            with checkpoint.as_directory() as directory:
                training = training_summary(read_state(Path(directory)))
                export_checkpoint(Path(directory), out_dir, spec=spec, model_dir=model_dir, base_ref=base_ref)
            echo(
                f"training: {training['steps']}/{training['total_steps']} steps, best val_loss "
                f"{training['best_val_loss']:.4f} at step {training['best_step']} "
                f"(before training {training['initial_val_loss']:.4f})"
                + (", stopped early" if training["stopped_early"] else "")
            )
            echo(f"evaluating on {len(splits.test)} test examples, tuned and base")
            metrics = evaluate_result(
                out_dir,
                spec=spec,
                model_dir=model_dir,
                tokenizer=tokenizer,
                test=splits.test,
                inputs=encoded["test"],
            )
            registry.add_job_event(job_id, "job.evaluated", format_table(metrics), metrics)

            # -- 6. publish
            lineage = {
                "job_id": job_id,
                "spec": spec_record,
                "hyperparameters": hyperparameters.model_dump(mode="json"),
                "base_model": base_ref,
                "data_hash": data_hash,
                "data": {**splits.stats, **token_stats},
                "parent": spec.output.parent,
                "training": training,
                "search": {"trials": trials} if trials else None,
            }
            version = publish(
                registry=registry,
                store=store,
                source_dir=out_dir,
                spec=spec,
                base_ref=base_ref,
                job_id=job_id,
                data_hash=data_hash,
                metrics=metrics,
                lineage=lineage,
            )
        outcome = TrainOutcome(
            job_id=job_id,
            version=version.ref,
            uri=version.uri,
            metrics=metrics,
            training=training,
            hyperparameters=hyperparameters.model_dump(mode="json"),
            trials=trials,
        )
        registry.add_job_event(job_id, "job.published", f"{version.ref} stored at {version.uri} (candidate)")
        registry.finish_job(
            job_id,
            JobStatus.SUCCEEDED,
            {
                "version": outcome.version,
                "uri": outcome.uri,
                "metrics": metrics,
                "training": training,
                "hyperparameters": outcome.hyperparameters,
                "trials": trials,
            },
        )
    except BaseException as exc:
        shutil.rmtree(staging_dir(job_id), ignore_errors=True)
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        registry.add_job_event(job_id, "job.stopped" if stopped else "job.failed", error)
        status = JobStatus.STOPPED if stopped else JobStatus.FAILED
        registry.finish_job(job_id, status, {"error": error, "trials": trials})
        raise
    # The run folders served resumption; the published version now holds everything worth keeping.
    shutil.rmtree(staging_dir(job_id), ignore_errors=True)
    for name in run_dirs:
        path = f"{store.root.rstrip('/')}/runs/{name}"
        if store.fs.exists(path):
            store.fs.rm(path, recursive=True)
    return outcome


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
) -> TorchTrainer:
    """The Ray Train run of one Ray Tune trial: the same loop with some hyper-parameters replaced."""
    from tuneloop.train.tune import run_name

    config = {**loop_config, "overrides": overrides, "tag": f"trial {trial_id}"}
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
    window_loss, window_scored, window_tokens = 0.0, 0, 0
    window_start = last_report = time.monotonic()
    while step < total_steps and not stop:
        # One optimizer step over `gradient_accumulation` micro-batches (step.py, as the benchmark runs it).
        stats = optimizer_step(
            module,
            [next(batches) for _ in range(hp.gradient_accumulation)],
            optimizer=optimizer,
            scheduler=scheduler,
            trainable=trainable,
            device=device,
            max_grad_norm=MAX_GRAD_NORM,
        )
        window_loss += stats.loss_sum
        window_scored += stats.scored
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
        loss_total, scored_total, tokens_total = all_reduce_sum([window_loss, window_scored, window_tokens])
        now = time.monotonic()
        state["tokens"] += int(tokens_total)
        metrics = {
            "step": step,
            "total_steps": total_steps,
            "epoch": state["micro_batches"] / len(loader),
            "loss": loss_total / scored_total if scored_total else math.nan,
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": tokens_total / max(now - window_start, 1e-9),
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
        window_loss, window_scored, window_tokens = 0.0, 0, 0
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


def _close_recorded_job(registry: Registry, job_id: str | None, error: str) -> None:
    """Mark a job that was recorded before it ran as failed; never create a row for a job that
    could not start."""
    from tuneloop.platform.errors import NotFoundError
    from tuneloop.platform.registry.models import JobStatus

    if job_id is None:
        return
    try:
        job = registry.get_job(job_id)
    except NotFoundError:
        return
    if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
        registry.add_job_event(job_id, "job.failed", error[:2000])
        registry.finish_job(job_id, JobStatus.FAILED, {"error": error[:2000]})


def _job_id(spec: JobSpec) -> str:
    """The registry job id: the Ray job's submission id for a job driver, else a new one."""
    return (
        settings.ray_job_submission_id()
        or f"train-{spec.output.adapter}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    )
