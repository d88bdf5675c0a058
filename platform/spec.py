"""The training job spec: a YAML file, validated once, every problem reported with its path.

A spec names the base model, the method and its options, the task (sft or uft), the data, the
hyper-parameters, early stopping, an optional Ray Tune search, scaling and the output adapter name.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop.platform.errors import ConfigError

Method = Literal[
    "full", "partial", "lora", "qlora", "prompt_tuning", "p_tuning", "prefix_tuning", "adapter", "ia3"
]
Task = Literal["sft", "uft"]
RowField = Literal["messages", "prompt", "completion", "text"]
"""A row's content fields, as a column mapping (data.columns) names them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodSpec(_Strict):
    """The fine-tuning method and its options; an option set for a method it does not apply to is refused."""

    name: Method = Field(description="Which method: full, partial, lora, qlora, prompt_tuning, p_tuning, "
                         "prefix_tuning, adapter (bottleneck) or ia3.")  # fmt: skip
    rank: int = Field(8, ge=1, le=256, description="LoRA/QLoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA/QLoRA scaling alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA / adapter path.")
    target_modules: list[str] | None = Field(
        None,
        description="Modules to adapt. Defaults: LoRA/QLoRA q,k,v,o_proj; IA3 k,v,down_proj; adapter mlp.",
    )
    num_virtual_tokens: int = Field(
        8, ge=1, le=512, description="Prompt, P- and prefix tuning: virtual tokens."
    )
    prompt_init_text: str | None = Field(None, description="Prompt tuning: initialise from this text.")
    encoder_hidden_size: int = Field(64, ge=1, description="P-tuning: hidden size of the prompt encoder MLP.")
    bottleneck: int = Field(16, ge=1, description="Adapter tuning: bottleneck width of each adapter.")
    trainable_layers: list[int] | None = Field(
        None,
        description="Partial fine-tuning: indices of transformer blocks to train (negative: from the end).",
    )
    trainable_patterns: list[str] | None = Field(
        None, description="Partial fine-tuning: regular expressions over parameter names to train."
    )

    @model_validator(mode="after")
    def _options_fit_the_method(self) -> MethodSpec:
        wrong = sorted(f for f in self.model_fields_set - {"name"} if self.name not in APPLIES_TO[f])
        if wrong:
            fixes = "; ".join(f"{f} applies to {', '.join(sorted(APPLIES_TO[f]))}" for f in wrong)
            raise ValueError(f"option(s) {', '.join(wrong)} do not apply to method {self.name!r} ({fixes})")
        if self.name == "partial" and not (self.trainable_layers or self.trainable_patterns):
            raise ValueError("method 'partial' needs trainable_layers or trainable_patterns")
        return self


# Which methods each MethodSpec option means something for; setting it for another method is an error.
APPLIES_TO: dict[str, set[str]] = {
    "rank": {"lora", "qlora"},
    "alpha": {"lora", "qlora"},
    "dropout": {"lora", "qlora", "adapter"},
    "target_modules": {"lora", "qlora", "ia3", "adapter"},
    "num_virtual_tokens": {"prompt_tuning", "p_tuning", "prefix_tuning"},
    "prompt_init_text": {"prompt_tuning"},
    "encoder_hidden_size": {"p_tuning"},
    "bottleneck": {"adapter"},
    "trainable_layers": {"partial"},
    "trainable_patterns": {"partial"},
}


class DataSpec(_Strict):
    """Where the data comes from and how it is split."""

    train: Path = Field(
        description="Data file: JSONL, CSV or Parquet, or a `datasets` folder saved to disk; rows in chat "
        "(messages), prompt/completion or text format."
    )
    validation: Path | None = Field(None, description="Optional validation data (else split from train).")
    test: Path | None = Field(None, description="Optional test data (else split from train).")
    columns: dict[RowField, str] = Field(
        default_factory=dict,
        description="Column mapping, tuneloop's field -> your column or key, e.g. {prompt: question, "
        "completion: answer}; applies to every data file.",
    )
    split: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="Train/validation/test fractions used when files are not given."
    )
    seed: int = Field(0, description="Seed of the deterministic split.")
    max_length: int = Field(512, ge=8, description="Maximum tokens per example.")
    overlong: Literal["truncate", "drop", "error"] = Field(
        "truncate", description="What to do with examples longer than max_length (counted and reported)."
    )
    min_examples: int = Field(8, ge=1, description="Refuse a training set smaller than this.")

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> DataSpec:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"split {self.split} must be three non-negative fractions that sum to 1")
        return self


class HyperParams(_Strict):
    """Optimisation settings."""

    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Examples per worker per step.")
    epochs: float = Field(
        1.0, gt=0, description="Passes over the training split (ignored if max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed for initialisation and data order.")
    eval_every: int = Field(50, ge=1, description="Validate every this many optimizer steps.")
    packing: bool = Field(
        False,
        description="Pack each micro-batch's examples into shared rows of up to data.max_length tokens "
        "(positions restart per example and attention stays within it): same loss, far less padding. "
        "Not for prompt_tuning, p_tuning or prefix_tuning.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each block's activations in the backward pass: much less memory for long "
        "sequences, about a third more compute.",
    )
    compile: bool = Field(
        False, description="torch.compile each decoder block (a one-off compile at the start of each run)."
    )


class EarlyStopping(_Strict):
    """Stop when the validation metric stops improving."""

    metric: Literal["val_loss"] = Field("val_loss", description="Metric to watch (lower is better).")
    patience: int = Field(3, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest decrease that counts as an improvement.")


class SearchSpec(_Strict):
    """Optional Ray Tune search over hyper-parameters, scored on the validation split."""

    space: dict[str, Annotated[dict[str, Any], Field()]] = Field(
        description="Per hyper-parameter: {loguniform: [lo, hi]}, {uniform: [lo, hi]} or {choice: [...]}."
    )
    num_trials: int = Field(4, ge=1, le=64, description="Trials to run.")
    scheduler: Literal["asha", "fifo"] = Field("asha", description="ASHA stops weak trials early.")
    max_concurrent: int = Field(2, ge=1, description="Trials run at once.")


class ScalingSpec(_Strict):
    """How many Ray Train workers and what each gets."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP over gloo on CPUs, NCCL on GPUs).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    use_gpu: bool = Field(False, description="Give each worker a GPU.")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every worker holds the whole model. fsdp: weights, gradients and optimizer state "
        "are sharded over the workers (FSDP2), for models larger than one device (lora and full).",
    )
    max_failures: int = Field(
        2, ge=0, description="Worker failures to recover from (from the last checkpoint)."
    )


class OutputSpec(_Strict):
    """Where the result goes: tuneloop assigns the version number."""

    adapter: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Adapter name in the registry.")
    parent: str | None = Field(None, description="Version this retrains, as adapter@N (lineage).")
    init_from: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}@[0-9]+$",
        description="Start from the trained weights of this version (adapter@N: same method, options and "
        "base) instead of fresh ones: a retrain continues from the live version and forgets less. PEFT "
        "methods (lora, qlora, prompt_tuning, p_tuning, prefix_tuning, ia3).",
    )


class JobSpec(_Strict):
    """A fine-tuning job: `tuneloop train job.yaml`, usually inside `ray job submit`."""

    base_model: str = Field(description="Local model folder, or a name pulled with `tuneloop models pull`.")
    method: MethodSpec = Field(description="Fine-tuning method and its options.")
    task: Task = Field("sft", description="sft: loss on answers only; uft: causal-LM loss on raw text.")
    data: DataSpec
    hyperparameters: HyperParams = Field(default_factory=HyperParams)
    early_stopping: EarlyStopping | None = Field(default_factory=EarlyStopping)
    search: SearchSpec | None = None
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    output: OutputSpec

    @model_validator(mode="after")
    def _options_fit_together(self) -> JobSpec:
        method = self.method.name
        if self.hyperparameters.packing and method in SOFT_PROMPTS:
            raise ValueError(f"hyperparameters.packing does not apply to {method!r} (its virtual tokens)")
        if self.scaling.strategy == "fsdp" and method not in FSDP_METHODS:
            raise ValueError(
                f"scaling.strategy fsdp supports {', '.join(sorted(FSDP_METHODS))}, not {method!r}; use ddp"
            )
        return self


# Methods whose peft forward adds virtual tokens: packed rows would misplace them.
SOFT_PROMPTS = {"prompt_tuning", "p_tuning", "prefix_tuning"}
# Methods tried under FSDP (QLoRA's packed 4-bit weights cannot be sharded as DTensors).
FSDP_METHODS = {"lora", "full"}


def load_spec(path: Path) -> JobSpec:
    """Read and validate a job file; relative data paths are taken relative to the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"job spec {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    data = raw.get("data")
    if isinstance(data, dict):
        # Absolute, so a recorded spec (the registry's job row) does not depend on the cwd.
        for key in ("train", "validation", "test"):
            if isinstance(data.get(key), str):
                data[key] = str(data_path(data[key], path.resolve().parent))
    return parse_spec(raw, source=str(path))


def data_path(value: str, spec_dir: Path) -> Path:
    """A spec's data path as a local path: relative to the spec's folder, and a hub dataset file
    (`hf://datasets/ORG/NAME[@REVISION]/FILE`) as its copy in the Hugging Face cache."""
    from tuneloop.platform.hub import hub_dataset_file

    cached = hub_dataset_file(value)
    if cached is not None:
        return cached
    given = Path(value).expanduser()
    return given if given.is_absolute() else spec_dir / given


def parse_spec(raw: dict[str, Any], source: str = "spec") -> JobSpec:
    """Validate a spec mapping, raising one ConfigError that lists every problem with its path."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"  {where}: {message}")
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n" + "\n".join(problems)) from None
