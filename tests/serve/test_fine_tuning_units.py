"""The fine-tuning API's request mapping, without servers: OpenAI fields and `extra_body` options onto
a job spec that `parse_spec` accepts, and the refusals that name their parameter."""

from __future__ import annotations

import pytest

from tuneloop.platform.spec import parse_spec
from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.fine_tuning.protocol import CreateJob
from tuneloop.serve.fine_tuning.submit import BASE_LEARNING_RATE, hyperparameters_of, resolved, spec_of
from tuneloop.serve.protocol import parse_json


def body(**fields: object) -> CreateJob:
    import json

    return parse_json(json.dumps({"model": "base", "training_file": "file-a", **fields}).encode(), CreateJob)


def test_openai_fields_and_tuneloop_options_make_a_valid_spec() -> None:
    request = body(
        validation_file="file-v",
        suffix="support",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5}},
        },
        hyperparameters={"n_epochs": 9},  # the method's hyper-parameters win over the older top-level field
        tuneloop={"method": "qlora", "rank": 16, "max_steps": 30, "early_stopping": 5, "task": "sft"},
    )
    raw = spec_of(request, base_model="/models/base", adapter="support-abc123", seed=7)
    spec = parse_spec(raw)
    assert (spec.method.name, spec.method.rank, spec.output.adapter) == ("qlora", 16, "support-abc123")
    assert spec.hyperparameters.epochs == 3 and spec.hyperparameters.max_steps == 30
    assert spec.hyperparameters.learning_rate == pytest.approx(BASE_LEARNING_RATE * 0.5)
    assert spec.hyperparameters.seed == spec.data.seed == 7
    assert spec.early_stopping is not None and spec.early_stopping.patience == 5
    assert (spec.data.train.name, spec.data.validation.name) == ("file-a.jsonl", "file-v.jsonl")  # type: ignore[union-attr]
    no_stop = spec_of(body(tuneloop={"early_stopping": False}), base_model="b", adapter="ft-1", seed=0)
    assert parse_spec(no_stop).early_stopping is None


def test_auto_keeps_the_spec_defaults() -> None:
    shown = resolved(hyperparameters_of(body()))
    assert shown == {"n_epochs": 1.0, "batch_size": 4, "learning_rate_multiplier": 1.0}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": 11}}, "hyperparameters.learning_rate_multiplier"),
        ({"tuneloop": {"rank": 0}}, "tuneloop.rank"),
        ({"tuneloop": {"method": "dora"}}, "tuneloop.method"),
        ({"integrations": [{"type": "wandb"}]}, "integrations"),
        ({"metadata": {"k": "v" * 600}}, "metadata"),
        ({"suffix": "x" * 41}, "suffix"),
        ({"n_epochs": 3}, "n_epochs"),
    ],
)
def test_bad_fields_are_400s_naming_their_param(fields: dict[str, object], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        hyperparameters_of(body(**fields))
    assert caught.value.status == 400 and caught.value.param == param


def test_an_upload_is_checked_as_jsonl_whatever_its_name() -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuneloop.serve.files.serving import validate

    line = b'{"prompt": "What is one?", "completion": "1"}\n'
    assert validate(line, "train.csv") == {"format": "prompt_completion", "examples": 1}
    table = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}]), table)
    with pytest.raises(OpenAIError) as caught:
        validate(table.getvalue(), "train.parquet")
    assert caught.value.status == 400 and "train.parquet:1: invalid JSON" in caught.value.message


def test_an_upload_named_dot_dot_is_a_400() -> None:
    from tuneloop.serve.files.serving import upload_name

    for bad in ("..", "a/..", "../.."):
        with pytest.raises(OpenAIError) as caught:
            upload_name(bad)
        assert caught.value.status == 400 and caught.value.param == "file"
    assert upload_name("../x/train.jsonl") == "train.jsonl" and upload_name(None) == "upload.jsonl"
