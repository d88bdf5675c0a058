"""The job specs in examples/ stay valid: each one validates, names a command that runs it, and its data
passes the same checks `tuneloop train` runs before any compute (formats, then the splits)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from tuneloop.platform.data.formats import read_examples
from tuneloop.platform.data.splits import make_splits
from tuneloop.platform.spec import Method, load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPECS = sorted(EXAMPLES.glob("*.yaml"))


def test_one_example_per_method_and_both_tasks() -> None:
    specs = [load_spec(path) for path in SPECS]
    assert {spec.method.name for spec in specs} == set(get_args(Method))
    assert {spec.task for spec in specs} == {"sft", "uft"}
    adapters = [spec.output.adapter for spec in specs]
    assert len(adapters) == len(set(adapters)), "two examples would publish to the same adapter"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_validates_and_says_how_to_run_it(path: Path) -> None:
    spec = load_spec(path)
    assert spec.base_model == "smollm2-135m"  # a name `tuneloop models pull` knows
    header = path.read_text().split("\nbase_model:")[0]
    assert header.startswith("# ") and all(line.startswith("#") for line in header.splitlines())
    assert f"tuneloop jobs submit examples/{path.name}" in header
    assert f"--working-dir examples -- tuneloop train {path.name}" in header

    for key in ("train", "validation", "test"):
        data = getattr(spec.data, key)
        if data is not None:
            assert data.is_relative_to(EXAMPLES / "data"), f"{path.name}: data outside examples/data"
            read_examples(data, task=spec.task, min_examples=spec.data.min_examples)
    splits = make_splits(spec.data, spec.task)
    assert all(splits.by_name().values()), f"{path.name}: an empty split"
