"""From an OpenAI fine-tuning request to a submitted Ray job of the training recipe.

`spec_of` maps the request onto a tuneloop job spec; `submit` stages the uploaded files beside it and
hands it to `submit_spec`, the one submission path (`tuneloop jobs submit` and the drift policy use
it too): the spec and the data are checked here first, then the job is recorded in the registry and
submitted through the Ray Jobs API. A problem found before submission is kept as the job's `error`
(status failed, in `validating_files`), with the bad line named in the uploaded file's terms.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.data.formats import DataError
from tuneloop.platform.errors import ConfigError, NotFoundError, TuneloopError
from tuneloop.platform.ray.submit import new_job_id, submit_spec
from tuneloop.platform.registry import Registry, finetuning
from tuneloop.platform.settings import redact_url
from tuneloop.platform.spec import HyperParams
from tuneloop.serve.errors import bad_request
from tuneloop.serve.files.serving import file_path
from tuneloop.serve.fine_tuning.protocol import EXTRA_KEY, SUPPORTED_METHODS, CreateJob, Hyperparameters

log = logging.getLogger(__name__)
BASE_LEARNING_RATE: float = HyperParams.model_fields["learning_rate"].default


def hyperparameters_of(body: CreateJob) -> Hyperparameters:
    """The request's hyper-parameters (`method.supervised` wins over the older top-level field);
    a method type other than supervised is a 400 naming what is supported."""
    if body.method is not None:
        if body.method.type not in SUPPORTED_METHODS:
            raise bad_request(
                f"method.type {body.method.type!r} is not supported here; supported: "
                f"{', '.join(SUPPORTED_METHODS)} (tuneloop's own methods go in extra_body "
                f'{{"{EXTRA_KEY}": {{"method": ...}}}})',
                param="method.type",
                code="unsupported_method",
            )
        if body.method.supervised and body.method.supervised.hyperparameters:
            return body.method.supervised.hyperparameters
    return body.hyperparameters or Hyperparameters()


def resolved(hp: Hyperparameters) -> dict[str, Any]:
    """The hyper-parameters as the job object shows them: `auto` replaced by what is used."""
    defaults = HyperParams()
    return {
        "n_epochs": defaults.epochs if hp.n_epochs == "auto" else hp.n_epochs,
        "batch_size": defaults.batch_size if hp.batch_size == "auto" else hp.batch_size,
        "learning_rate_multiplier": 1.0
        if hp.learning_rate_multiplier == "auto"
        else hp.learning_rate_multiplier,
    }


def spec_of(body: CreateJob, *, base_model: str, adapter: str, seed: int) -> dict[str, Any]:
    """The job spec (a mapping, validated by `submit_spec`) for this request."""
    opts = body.tuneloop
    hp = resolved(hyperparameters_of(body))
    method: dict[str, Any] = {"name": opts.method if opts else "lora"}
    data: dict[str, Any] = {"train": f"{body.training_file}.jsonl", "seed": seed}
    if body.validation_file:
        data["validation"] = f"{body.validation_file}.jsonl"
    hyper: dict[str, Any] = {
        "epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "learning_rate": BASE_LEARNING_RATE * hp["learning_rate_multiplier"],
        "seed": seed,
    }
    spec: dict[str, Any] = {
        "base_model": base_model,
        "method": method,
        "data": data,
        "hyperparameters": hyper,
    }
    if opts is not None:
        for name in ("rank", "alpha", "num_virtual_tokens"):
            if getattr(opts, name) is not None:
                method[name] = getattr(opts, name)
        spec["task"] = opts.task
        for name in ("max_steps", "eval_every"):
            if getattr(opts, name) is not None:
                hyper[name] = getattr(opts, name)
        if opts.max_length is not None:
            data["max_length"] = opts.max_length
        if opts.early_stopping is False:
            spec["early_stopping"] = None
        elif opts.early_stopping is not True:
            spec["early_stopping"] = {"patience": int(opts.early_stopping)}
        if opts.search is not None:
            spec["search"] = opts.search
        spec["scaling"] = {"num_workers": opts.num_workers, "use_gpu": opts.use_gpu}
    spec["output"] = {"adapter": adapter}
    return spec


def submit(registry: Registry, store: ArtifactStore, ft_id: str, spec: dict[str, Any]) -> None:
    """Stage the files and the spec, submit, and record the outcome on the fine-tuning job row
    (blocking: call it in a worker thread)."""
    adapter = spec["output"]["adapter"]
    job_id = new_job_id(adapter)
    error: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="tuneloop-ft-") as tmp:
        folder = Path(tmp)
        for key in ("train", "validation"):
            if key in spec["data"]:
                name = spec["data"][key]
                store.fs.get_file(file_path(store, name.removesuffix(".jsonl")), str(folder / name))
        spec_path = folder / "job.yaml"
        spec_path.write_text(
            f"# {ft_id}: POST /v1/fine_tuning/jobs\n" + yaml.safe_dump(spec, sort_keys=False)
        )
        try:
            submit_spec(spec_path, job_id=job_id)
        except DataError as exc:
            error = failure("invalid_training_file", str(exc).replace(f"{folder}/", ""), "training_file")
        except ConfigError as exc:
            error = failure("invalid_request", str(exc).replace(f"{folder}/", ""), None)
        except TuneloopError as exc:  # Ray unreachable, token refused, ...
            error = failure("submission_failed", str(exc), None)
        except Exception as exc:
            log.exception("submitting %s failed", ft_id)
            error = failure("submission_failed", redact_url(f"{type(exc).__name__}: {exc}"), None)
    try:
        registry.get_job(job_id)
        recorded = True
    except NotFoundError:
        recorded = False
    finetuning.update_ft_job(registry, ft_id, job_id=job_id if recorded else None, error=error)


def failure(code: str, message: str, param: str | None) -> dict[str, Any]:
    return {"code": code, "message": message[:4000], "param": param}
