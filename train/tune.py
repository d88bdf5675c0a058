"""Ray Tune search over a job's hyper-parameters, scored on the validation split.

Each trial is a whole Ray Train run of the recipe with some hyper-parameters replaced, driven from a
small Tune actor (`with_resources(..., {"CPU": 0.05})`: Tune refuses zero) that runs the trial's
`TorchTrainer`; `TuneReportCallback` forwards every `ray.train.report` to Tune. ASHA compares trials
on `val_loss` at `step` milestones that are multiples of eval_every (grace period eval_every,
reduction factor 2), so it only ever compares fresh validations, and stops the weak ones.

Every trial checkpoints its best weights, so the winner is simply the trial with the lowest best
validation loss, taken from its own latest checkpoint (the same file that is then published),
whether it ran to the end or not. Trials are sampled reproducibly (the job's seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tuneloop.platform.spec import HyperParams, SearchSpec
from tuneloop.train.errors import TrainingError

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from ray.train.torch import TorchTrainer

SAMPLERS = ("loguniform", "uniform", "choice")
# Fields a range can sample: the float-valued ones (integers and strings take `choice`).
RANGE_FIELDS = ("learning_rate", "weight_decay", "epochs")
TRIAL_CPU = 0.05
ASHA_REDUCTION = 2

# (trial id, hyper-parameter overrides, Tune callbacks) -> the trial's Ray Train trainer.
TrainerFactory = Callable[[str, dict[str, Any], list[Any]], "TorchTrainer"]


def space_problems(search: SearchSpec, base: HyperParams) -> list[str]:
    """Every problem of a search space, as `search.space.<field>: <what is wrong>` lines."""
    problems = []
    for name, entry in search.space.items():
        where = f"search.space.{name}"
        if name not in HyperParams.model_fields:
            problems.append(f"{where}: not a hyper-parameter (one of {', '.join(HyperParams.model_fields)})")
            continue
        if len(entry) != 1 or next(iter(entry)) not in SAMPLERS:
            problems.append(f"{where}: give exactly one of {', '.join(SAMPLERS)}, got {sorted(entry)}")
            continue
        kind, values = next(iter(entry.items()))
        if kind == "choice":
            if not isinstance(values, list) or not values:
                problems.append(f"{where}.choice: must be a non-empty list")
                continue
        elif name not in RANGE_FIELDS:
            problems.append(f"{where}.{kind}: ranges apply to {', '.join(RANGE_FIELDS)}; use choice")
            continue
        elif not (
            isinstance(values, list)
            and len(values) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            and values[0] < values[1]
        ):
            problems.append(f"{where}.{kind}: must be [low, high] numbers with low < high, got {values!r}")
            continue
        elif kind == "loguniform" and values[0] <= 0:
            problems.append(f"{where}.loguniform: low must be > 0, got {values[0]!r}")
            continue
        for value in values:
            try:
                HyperParams.model_validate({**base.model_dump(), name: value})
            except ValidationError as exc:
                problems.append(f"{where}: value {value!r} is invalid: {exc.errors()[0]['msg']}")
    return problems


def tune_space(search: SearchSpec) -> dict[str, Any]:
    """The space as Ray Tune domains (call after `space_problems` found none)."""
    from ray import tune

    samplers = {"loguniform": tune.loguniform, "uniform": tune.uniform}
    space: dict[str, Any] = {}
    for name, entry in search.space.items():
        kind, values = next(iter(entry.items()))
        space[name] = tune.choice(values) if kind == "choice" else samplers[kind](*values)
    return space


@dataclass
class Trial:
    """One trial as the registry records it."""

    trial_id: str
    config: dict[str, Any]
    status: str  # completed | early_stopped | stopped_by_asha | failed
    steps: int = 0
    best_val_loss: float = math.nan
    best_step: int = 0
    checkpoint: str | None = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        found = asdict(self)
        found["best_val_loss"] = None if math.isnan(self.best_val_loss) else self.best_val_loss
        return found


@dataclass
class SearchResult:
    """Every trial, and the latest checkpoint of each that left one (by trial id)."""

    trials: list[Trial] = field(default_factory=list)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)

    @property
    def best(self) -> Trial:
        """The trial with the lowest best validation loss among those that left a checkpoint."""
        usable = [
            t for t in self.trials if t.trial_id in self.checkpoints and not math.isnan(t.best_val_loss)
        ]
        if not usable:
            raise TrainingError(
                "no trial left a checkpoint: "
                + "; ".join(f"{t.trial_id} {t.status} {t.error or ''}".strip() for t in self.trials)
            )
        return min(usable, key=lambda t: t.best_val_loss)


def run_search(
    search: SearchSpec,
    *,
    make_trainer: TrainerFactory,
    storage_path: str,
    name: str,
    max_steps: int,
    eval_every: int,
    seed: int,
) -> SearchResult:
    """Run the trials; return every one of them (whatever became of it)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    scheduler = (
        ASHAScheduler(
            time_attr="step",
            max_t=max(max_steps, eval_every),
            grace_period=eval_every,
            reduction_factor=ASHA_REDUCTION,
        )
        if search.scheduler == "asha"
        else FIFOScheduler()
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, make_trainer=make_trainer), {"CPU": TRIAL_CPU}),
        param_space=tune_space(search),
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            num_samples=search.num_trials,
            max_concurrent_trials=search.max_concurrent,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0),
    )
    grid = tuner.fit()
    found = SearchResult()
    for index in range(len(grid)):
        result = grid[index]
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        trial = Trial(
            trial_id=trial_id, config=dict(result.config or {}), status=_status(metrics, result.error)
        )
        trial.steps = int(metrics.get("step", 0))
        trial.best_val_loss = float(metrics.get("best_val_loss", math.nan))
        trial.best_step = int(metrics.get("best_step", 0))
        if result.error is not None:
            trial.error = str(result.error).strip().splitlines()[-1][:500]
        checkpoint, saved = _latest_checkpoint(f"{storage_path.rstrip('/')}/{run_name(name, trial_id)}")
        if checkpoint is not None and saved is not None:
            # The checkpoint's own record: its best weights are what would be published.
            trial.checkpoint = checkpoint.path
            trial.best_val_loss, trial.best_step = saved
            found.checkpoints[trial_id] = checkpoint
        found.trials.append(trial)
    found.trials.sort(key=lambda t: t.trial_id)
    return found


def run_name(search_name: str, trial_id: str) -> str:
    """The Ray Train run name of a trial (a folder beside the search's own)."""
    return f"{search_name}-{trial_id}"


def _trial(config: dict[str, Any], make_trainer: TrainerFactory) -> None:
    """One trial, in its Tune actor: the trial's Ray Train run, reporting to Tune as it goes."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    make_trainer(trial_id, config, [TuneReportCallback()]).fit()


def _status(metrics: dict[str, Any], error: BaseException | None) -> str:
    if error is not None:
        return "failed"
    if metrics.get("final"):
        return "early_stopped" if metrics.get("stopped_early") else "completed"
    return "stopped_by_asha"


def _latest_checkpoint(run_dir: str) -> tuple[Checkpoint | None, tuple[float, int] | None]:
    """(checkpoint, (best val loss, best step)) of a Ray Train run's latest checkpoint, or Nones."""
    from ray.train import Result

    from tuneloop.train.state import read_state

    try:
        checkpoint = Result.from_path(run_dir).checkpoint
    except RuntimeError:  # the run never got as far as its first checkpoint
        return None, None
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as directory:
        stopper = read_state(Path(directory))["stopper"]
    return checkpoint, (float(stopper["best"]), int(stopper["best_step"]))
