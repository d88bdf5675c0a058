"""`tuneloop serve --model ORG/NAME`: a base model by Hugging Face id, from a real hub cache, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.gateway import start_gateway
from helpers.hub_cache import lay_out_hub_cache
from openai import OpenAI

from tuneloop.platform.adapters import import_adapter
from tuneloop.platform.apikeys import create_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.registry import Registry

pytestmark = pytest.mark.slow
REPO = "tiny-org/tiny-llama"


def test_a_replica_serves_a_hub_id_and_lists_it_as_given(
    tiny_model_dir: Path, tiny_lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_home = tmp_path / "hf"
    lay_out_hub_cache(hf_home, REPO, tiny_model_dir)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = tmp_path / "home"
    registry = Registry(f"sqlite:///{home / 'registry.db'}")
    store = ArtifactStore(str(home / "artifacts"))
    version = import_adapter(
        "bot", tiny_lora_dir, registry=registry, store=store, max_lora_rank=16, base_model=REPO
    )
    registry.promote("bot", version.ref)
    key = create_key(registry, scopes=[], admin=True).secret
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TUNELOOP_CAPTURE_ENABLED": "0"}
    with start_gateway(REPO, home, extra_env=env) as gateway:
        client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        models = {m.id: m for m in client.models.list()}
        assert REPO in models and models["bot"].model_extra["parent"] == REPO  # type: ignore[index]
        for model in (REPO, "bot"):
            answer = client.completions.create(
                model=model,
                prompt="The river",
                max_tokens=3,
                temperature=0.0,
                extra_body={"ignore_eos": True},
            )
            assert answer.model == model and answer.usage is not None and answer.usage.completion_tokens == 3
