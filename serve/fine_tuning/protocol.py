"""The bodies and answers of /v1/fine_tuning/jobs, in OpenAI's shape.

`CreateJob` is what `client.fine_tuning.jobs.create(...)` sends. OpenAI's fields map onto a tuneloop
job spec (see serving.spec_of); tuneloop's own options travel in one extra key, `tuneloop`
(`extra_body={"tuneloop": {...}}` in the SDK), described by `TuneloopOptions`. Unknown fields are
refused with a 400 naming them, so a typo never silently trains with a default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXTRA_KEY = "tuneloop"
SUPPORTED_METHODS = ("supervised",)
AUTO = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    """OpenAI's hyper-parameters; `auto` keeps tuneloop's default (the job spec's)."""

    n_epochs: int | AUTO = Field("auto", description="Passes over the training data (1-50).")
    batch_size: int | AUTO = Field("auto", description="Examples per step (1-256).")
    learning_rate_multiplier: float | AUTO = Field(
        "auto", description="Scales tuneloop's default learning rate (2e-4), between 0 and 10."
    )

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 50:
            raise ValueError("n_epochs must be between 1 and 50")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("batch_size must be between 1 and 256")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0 < value <= 10:
            raise ValueError("learning_rate_multiplier must be above 0 and at most 10")
        return value


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """`{"type": "supervised", "supervised": {"hyperparameters": {...}}}`; other types are refused."""

    model_config = ConfigDict(extra="allow")
    type: str
    supervised: Supervised | None = None


class TuneloopOptions(_Strict):
    """tuneloop's own options, in `extra_body={"tuneloop": {...}}`."""

    method: Literal["lora", "qlora", "prompt_tuning", "p_tuning", "ia3"] = Field(
        "lora", description="How to fine-tune; each is served by this gateway as soon as it is published."
    )
    rank: int | None = Field(None, ge=1, le=64, description="LoRA/QLoRA rank.")
    alpha: float | None = Field(None, gt=0, description="LoRA/QLoRA alpha.")
    num_virtual_tokens: int | None = Field(None, ge=1, le=128, description="Prompt/P-tuning tokens.")
    task: Literal["sft", "uft"] = Field("sft", description="uft trains on `text` files (raw text).")
    max_steps: int | None = Field(None, ge=1, le=100_000, description="Stop after this many steps.")
    eval_every: int | None = Field(None, ge=1, description="Validate (and checkpoint) every N steps.")
    max_length: int | None = Field(None, ge=8, le=8192, description="Tokens per example.")
    early_stopping: bool | int = Field(
        True, description="Stop when validation loss stops improving: true, false, or the patience."
    )
    search: dict[str, Any] | None = Field(
        None, description="A Ray Tune search, as the job spec's `search` (space, num_trials, ...)."
    )
    num_workers: int = Field(1, ge=1, le=64, description="Ray Train workers.")
    use_gpu: bool = Field(False, description="Give each worker a GPU.")


class CreateJob(_Strict):
    """POST /v1/fine_tuning/jobs."""

    model: str = Field(max_length=512, description="The base model this gateway serves.")
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="Names the adapter (lowercase, digits, -)."
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = Field(None, max_length=0, description="Not supported: send none.")
    tuneloop: TuneloopOptions | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, item in (value or {}).items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return value


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str = "tuneloop"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    user_provided_suffix: str | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    has_more: bool


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str | None = Field(
        None, description="The callable version for the published (best-validation) checkpoint; else none."
    )
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
