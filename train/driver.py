"""The driver of a training job: one job spec in, one candidate version out. It reads top to bottom.

`run` is what `tuneloop train` runs, in the Ray job's driver process:

1. `check`: load the spec and check everything that can be checked without compute, all at once: the
   spec, the base model, the search space, the lineage the registry must accept, every data file.
   Then split (deterministic, duplicate-free, hashed) and tokenise. Nothing has started yet: a bad
   spec or bad data is one error listing every problem, and no job row, run or artifact.
2. Record the job in the registry and join Ray (or start a private local Ray, see `cluster.py`).
3. `fit`: train with Ray Train, which runs `recipe.train_loop_per_worker` on every worker; with a
   search, one such run per Ray Tune trial (`tune.py`), the best one kept.
4. `finish`: rebuild the best-validation weights of the kept run from its checkpoint in the method's
   own format, score them on the held-out test split beside the base model, and publish them:
   artifact store + registry version (status candidate). The job is closed.
"""

from __future__ import annotations

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
from tuneloop.platform.data import DataError, Splits, make_splits
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.spec import HyperParams, JobSpec, load_spec
from tuneloop.train.cluster import address_problems, ray_cluster
from tuneloop.train.errors import TrainingError
from tuneloop.train.preflight import base_model, lineage_problems
from tuneloop.train.recipe import build_trainer, planned_steps, trial_trainer
from tuneloop.train.tokenize import encode_splits

if TYPE_CHECKING:
    from ray.train import Checkpoint

    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.registry import Registry


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


@dataclass
class Checked:
    """A job that passed every check: its spec, base model, splits and their token ids."""

    spec: JobSpec
    model_dir: Path
    base_ref: str
    splits: Splits
    tokenizer: Any
    encoded: dict[str, Any]
    token_stats: dict[str, Any]
    pad_id: int

    @property
    def data_hash(self) -> str:
        return str(self.splits.stats["data_hash"])


@dataclass
class Recorded:
    """A job the registry knows: where its progress, versions and artifacts go."""

    job_id: str
    spec_record: dict[str, Any]  # the spec as recorded: only what the user set
    registry: Registry
    store: ArtifactStore
    echo: Callable[[str], None]


@dataclass
class Fitted:
    """The kept run of a job: its checkpoint, the hyper-parameters it used, the runs to clean up."""

    checkpoint: Checkpoint | None
    hyperparameters: HyperParams
    run_dirs: list[str]
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
    from tuneloop.platform.registry.tables import JobStatus
    from tuneloop.train.state import staging_dir

    registry = registry or Registry()
    store = store or ArtifactStore()
    # A job recorded before it ran (`tuneloop jobs submit`) is closed as failed if it cannot start.
    submitted = job_id or settings.ray_job_submission_id()
    try:
        checked = check(job, registry, echo)
    except ConfigError as exc:  # DataError is one too
        _close_recorded_job(registry, submitted, str(exc))
        raise

    # -- 2. the registry job, and Ray
    spec = checked.spec
    job_id = job_id or _job_id(spec)
    # Only what the spec set: it validates again as it is (options of other methods are refused).
    spec_record = spec.model_dump(mode="json", exclude_unset=True)
    registry.start_job(job_id, spec.output.adapter, spec_record)
    echo(f"job {job_id}: {spec.method.name} {spec.task} on {checked.base_ref} -> {spec.output.adapter}")
    registry.add_job_event(job_id, "job.started", f"training {spec.output.adapter} ({spec.method.name})")
    recorded = Recorded(job_id, spec_record, registry, store, echo)
    fitted: Fitted | None = None
    try:
        fitted = fit(checked, recorded)
        outcome = finish(checked, fitted, recorded)
    except BaseException as exc:
        shutil.rmtree(staging_dir(job_id), ignore_errors=True)
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        registry.add_job_event(job_id, "job.stopped" if stopped else "job.failed", error)
        status = JobStatus.STOPPED if stopped else JobStatus.FAILED
        registry.finish_job(job_id, status, {"error": error, "trials": fitted.trials if fitted else []})
        raise
    # The run folders served resumption; the published version now holds everything worth keeping.
    shutil.rmtree(staging_dir(job_id), ignore_errors=True)
    for name in fitted.run_dirs:
        path = f"{store.root.rstrip('/')}/runs/{name}"
        if store.fs.exists(path):
            store.fs.rm(path, recursive=True)
    return outcome


def check(job: Path | JobSpec, registry: Registry, echo: Callable[[str], None]) -> Checked:
    """1. The spec and every check that needs no compute, reported together; then tokenise."""
    from tuneloop.train import tune
    from tuneloop.train.evaluate import pad_token_id

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

    # Tokenise on the driver: workers get token ids, never files they may not be able to read.
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load would bury the job log's progress lines
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source} cannot run: no usable tokenizer in {model_dir}: {exc}") from None
    encoded, token_stats = encode_splits(splits, tokenizer, spec.data, spec.task)
    checked = Checked(
        spec, model_dir, base_ref, splits, tokenizer, encoded, token_stats, pad_token_id(tokenizer)
    )
    sizes = f"{len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test"
    echo(f"data: {sizes} examples, {token_stats['train_tokens']} train tokens, hash {checked.data_hash[:12]}")
    return checked


def fit(checked: Checked, recorded: Recorded) -> Fitted:
    """3. Train: one Ray Train run, or one per Ray Tune trial with the best kept."""
    import logging

    from tuneloop.train import tune

    spec, job_id, registry, echo = checked.spec, recorded.job_id, recorded.registry, recorded.echo
    exit_at = settings.TUNELOOP_TEST_WORKER_EXIT_AT_STEP.get()
    if exit_at:
        logging.getLogger(__name__).warning(
            "TUNELOOP_TEST_WORKER_EXIT_AT_STEP=%d: a worker will exit at that step (testing only)", exit_at
        )
    storage = f"{recorded.store.root_url.rstrip('/')}/runs"
    with ray_cluster(echo):
        import ray

        loop_config = {
            "spec": recorded.spec_record,
            "overrides": {},
            "model_dir": str(checked.model_dir),
            "data": ray.put({"train": checked.encoded["train"], "validation": checked.encoded["validation"]}),
            "pad_id": checked.pad_id,
            "exit_at_step": exit_at,
            "job_id": job_id,
            "tag": job_id,
        }
        if spec.search is None:
            from tuneloop.train.progress import RegistryEvents

            events = RegistryEvents(registry.engine.url.render_as_string(hide_password=False), job_id, job_id)
            trainer = build_trainer(
                loop_config, scaling=spec.scaling, storage_path=storage, name=job_id, callbacks=[events]
            )
            result = trainer.fit()
            if result.error is not None:
                raise result.error
            return Fitted(result.checkpoint, spec.hyperparameters, [job_id])

        search_name, workers = f"{job_id}-search", spec.scaling.num_workers
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
            max_steps=planned_steps(spec.hyperparameters, len(checked.encoded["train"]), workers),
            eval_every=spec.hyperparameters.eval_every,
            seed=spec.hyperparameters.seed,
        )
    for trial in searched.trials:
        message = (
            f"trial {trial.trial_id} {trial.status} after {trial.steps} steps: best val_loss "
            f"{trial.best_val_loss:.4f} at step {trial.best_step} with {trial.config}"
        )
        echo(message)
        registry.add_job_event(job_id, "job.trial", message, trial.record())
    best = searched.best
    echo(f"best trial: {best.trial_id} {best.config}")
    return Fitted(
        checkpoint=searched.checkpoints[best.trial_id],
        hyperparameters=HyperParams.model_validate({**spec.hyperparameters.model_dump(), **best.config}),
        run_dirs=[search_name, *(tune.run_name(search_name, t.trial_id) for t in searched.trials)],
        trials=[trial.record() for trial in searched.trials],
    )


def finish(checked: Checked, fitted: Fitted, recorded: Recorded) -> TrainOutcome:
    """4. The best weights in the method's format, scored on the test split beside the base; published."""
    from tuneloop.platform.registry.tables import JobStatus
    from tuneloop.train.evaluate import evaluate_result, format_table
    from tuneloop.train.publish import export_checkpoint, publish
    from tuneloop.train.state import read_state, training_summary

    spec, splits = checked.spec, checked.splits
    job_id, registry, echo = recorded.job_id, recorded.registry, recorded.echo
    if fitted.checkpoint is None:
        raise TrainingError(f"job {job_id}: training ended without a checkpoint to publish")
    with tempfile.TemporaryDirectory(prefix="tuneloop-export-") as tmp:
        out_dir = Path(tmp) / "result"
        with fitted.checkpoint.as_directory() as directory:
            training = training_summary(read_state(Path(directory)))
            export_checkpoint(
                Path(directory), out_dir, spec=spec, model_dir=checked.model_dir, base_ref=checked.base_ref
            )
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
            model_dir=checked.model_dir,
            tokenizer=checked.tokenizer,
            test=splits.test,
            inputs=checked.encoded["test"],
        )
        registry.add_job_event(job_id, "job.evaluated", format_table(metrics), metrics)
        hyperparameters = fitted.hyperparameters.model_dump(mode="json")
        lineage = {
            "job_id": job_id,
            "spec": recorded.spec_record,
            "hyperparameters": hyperparameters,
            "base_model": checked.base_ref,
            "data_hash": checked.data_hash,
            "data": {**splits.stats, **checked.token_stats},
            "parent": spec.output.parent,
            "training": training,
            "search": {"trials": fitted.trials} if fitted.trials else None,
        }
        version = publish(
            registry=registry,
            store=recorded.store,
            source_dir=out_dir,
            spec=spec,
            base_ref=checked.base_ref,
            job_id=job_id,
            data_hash=checked.data_hash,
            metrics=metrics,
            lineage=lineage,
        )
    outcome = TrainOutcome(
        job_id=job_id,
        version=version.ref,
        uri=version.uri,
        metrics=metrics,
        training=training,
        hyperparameters=hyperparameters,
        trials=fitted.trials,
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
            "trials": fitted.trials,
        },
    )
    return outcome


def _close_recorded_job(registry: Registry, job_id: str | None, error: str) -> None:
    """Mark a job that was recorded before it ran as failed; never create a row for a job that
    could not start."""
    from tuneloop.platform.errors import NotFoundError
    from tuneloop.platform.registry.tables import JobStatus

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
