"""`tuneloop adapters import|promote|rollback` and `tuneloop keys create`, run through the CLI's `main`.

In-process (the same parser, dispatch and one-line error printing as the console script, without a
Python start-up per call); tests/platform/test_cli.py runs a few of the same errors as subprocesses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.stored import store_as_is
from safetensors.numpy import load_file, save_file
from sqlalchemy import text

from tuneloop.platform.apikeys import hash_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.cli import main
from tuneloop.platform.registry import Registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (
        "TUNELOOP_DB_URL",
        "TUNELOOP_ARTIFACTS",
        "TUNELOOP_MAX_LORA_RANK",
        "TUNELOOP_PROMPT_EMBEDS",
        "TUNELOOP_LORA_TARGET_MODULES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run a command that must fail; return its one error line."""
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("tuneloop: error: ") and "Traceback" not in err
    return lines[0]


def variant(source: Path, dest: Path, **config: object) -> Path:
    """A copy of an adapter folder with some adapter_config.json fields changed."""
    shutil.copytree(source, dest)
    path = dest / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return dest


def test_import_promote_rollback(home: Path, tiny_lora_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "adapters", "import", "support", str(tiny_lora_dir)) == (0, "support@1\n", "")
    assert cli(capsys, "adapters", "import", "support", str(tiny_lora_dir))[1] == "support@2\n"
    assert cli(capsys, "adapters", "promote", "support", "1")[1] == "support -> support@1\n"
    assert (
        cli(capsys, "adapters", "promote", "support", "support@2")[1]
        == "support -> support@2 (was support@1)\n"
    )
    assert cli(capsys, "adapters", "rollback", "support")[1] == "support -> support@1 (was support@2)\n"
    listed = cli(capsys, "adapters", "list")[1]
    assert "support@1" in listed and "live" in listed
    stored = home / "artifacts" / "adapters" / "support" / "v1"
    assert (stored / "adapter_model.safetensors").is_file() and (stored / "tuneloop.json").is_file()
    manifest = json.loads((stored / "tuneloop.json").read_text())
    assert manifest["serving"] == "lora" and manifest["method"] == "lora"
    assert "'nobody'" in fails(capsys, "adapters", "rollback", "nobody")
    assert "'support@9'" in fails(capsys, "adapters", "promote", "support", "9")
    assert "neither a number" in fails(capsys, "adapters", "promote", "support", "latest")


def test_import_refuses_bad_adapters(
    home: Path, tiny_lora_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "is not a folder" in fails(capsys, "adapters", "import", "a", str(tmp_path / "missing"))
    assert "no adapter_config.json" in fails(capsys, "adapters", "import", "a", str(tiny_model_dir))
    pickled = variant(tiny_lora_dir, tmp_path / "pickled")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    assert "only safetensors" in fails(capsys, "adapters", "import", "a", str(pickled))
    wide = variant(tiny_lora_dir, tmp_path / "wide", r=64)
    assert "rank 64, above the engine's limit 16" in fails(capsys, "adapters", "import", "a", str(wide))
    foreign = variant(
        tiny_lora_dir, tmp_path / "foreign", base_model_name_or_path="HuggingFaceTB/SmolLM2-135M"
    )
    assert "pass --base-model" in fails(capsys, "adapters", "import", "a", str(foreign))
    # Declared for another base, but it fits this one: --base-model says which replica serves it.
    code, out, _ = cli(capsys, "adapters", "import", "a", str(foreign), "--base-model", str(tiny_model_dir))
    assert (code, out) == (0, "a@1\n")
    misfit = variant(tiny_lora_dir, tmp_path / "misfit")
    rng = np.random.default_rng(0)
    save_file(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.random((8, 100), np.float32)},
        str(misfit / "adapter_model.safetensors"),
    )
    assert "input size 100, base has 128" in fails(capsys, "adapters", "import", "b", str(misfit))
    lokr = variant(tiny_lora_dir, tmp_path / "lokr", peft_type="LOKR")
    assert "is a LOKR adapter; tuneloop imports" in fails(capsys, "adapters", "import", "c", str(lokr))
    assert Registry().aliases() == {}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{"peft_type": "LORA", "r": "eight"}', "r must be a whole number of at least 1, got 'eight'"),
        ('{"peft_type": "LORA", "r": 0}', "r must be a whole number of at least 1, got 0"),
        ('{"peft_type": "LORA"}', "needs `r` (the LoRA rank)"),
        ('{"peft_type": "LORA", "r": 8, "rank_pattern": [4]}', "rank_pattern must be an object"),
        ('{"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": null}}', "rank_pattern.q_proj must be"),
        ('["LORA"]', "must hold a JSON object, not list"),
        ("{not json", "is not valid JSON"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_a_malformed_adapter_config_is_one_line_naming_the_problem(
    home: Path,
    tiny_lora_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config: str | bytes,
    says: str,
) -> None:
    folder = variant(tiny_lora_dir, tmp_path / "malformed")
    path = folder / "adapter_config.json"
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    line = fails(capsys, "adapters", "import", "m", str(folder))
    assert says in line and "adapter_config.json" in line


def test_promoting_an_unservable_method_is_refused_naming_it(
    home: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(
        json.dumps({"peft_type": "IA3", "base_model_name_or_path": str(tiny_model_dir)})
    )
    save_file({"ia3_l": np.ones((1, 128), np.float32)}, str(ia3 / "adapter_model.safetensors"))
    assert cli(capsys, "adapters", "import", "scaled", str(ia3))[1] == "scaled@1\n"
    line = fails(capsys, "adapters", "promote", "scaled", "1")
    assert "trained with ia3, which vLLM cannot serve" in line
    assert Registry().aliases() == {}


def test_lora_weights_the_engine_would_silently_skip_are_refused(
    home: Path,
    tiny_lora_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embeds = variant(tiny_lora_dir, tmp_path / "embeds")
    weights = load_file(str(embeds / "adapter_model.safetensors"))
    rng = np.random.default_rng(0)
    weights["base_model.model.model.embed_tokens.lora_embedding_A"] = rng.random((8, 512), np.float32)
    weights["base_model.model.model.embed_tokens.lora_embedding_B"] = rng.random((128, 8), np.float32)
    save_file(weights, str(embeds / "adapter_model.safetensors"))
    line = fails(capsys, "adapters", "import", "e", str(embeds))
    assert "has LoRA weights on embed_tokens, outside the modules the engine applies LoRA to" in line
    assert "TUNELOOP_LORA_TARGET_MODULES" in line and "silently ignore" in line
    # Replicas without prompt-embeddings serving do not restrict LoRA: it may be imported there...
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "0")
    assert cli(capsys, "adapters", "import", "e", str(embeds))[1] == "e@1\n"
    # ...but not promoted where replicas restrict LoRA to the linear layers.
    monkeypatch.delenv("TUNELOOP_PROMPT_EMBEDS")
    assert "e@1 has LoRA weights on embed_tokens" in fails(capsys, "adapters", "promote", "e", "1")
    assert Registry().aliases() == {}
    monkeypatch.setenv(
        "TUNELOOP_LORA_TARGET_MODULES", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )
    assert "embed_tokens" in fails(capsys, "adapters", "promote", "e", "1")
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "off")
    assert cli(capsys, "adapters", "promote", "e", "1")[0] == 0


def test_keys_create(home: Path, tiny_lora_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "adapters", "import", "support", str(tiny_lora_dir))
    cli(capsys, "adapters", "promote", "support-bot", "support@1")
    code, out, _ = cli(capsys, "keys", "create", "--scope", "support-bot")
    secret = out.strip()
    assert code == 0 and secret.startswith("tl-") and len(secret) > 40
    stored = Registry().find_api_key(hash_key(secret))
    assert stored is not None and stored.scopes == ["support-bot"] and not stored.admin
    assert secret.encode() not in (home / "registry.db").read_bytes()  # only the hash is kept
    admin = cli(capsys, "keys", "create", "--admin")[1].strip()
    found = Registry().find_api_key(hash_key(admin))
    assert found is not None and found.admin and admin != secret
    assert "give --scope" in fails(capsys, "keys", "create")
    assert "not both" in fails(capsys, "keys", "create", "--admin", "--scope", "support-bot")
    assert "unknown alias or adapter 'nope'" in fails(capsys, "keys", "create", "--scope", "support-bot,nope")


def test_serve_refuses_a_model_it_cannot_find(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is not a model folder" in fails(capsys, "serve", "--model", "/no/such/model")
    assert "'nobody@1'" in fails(capsys, "serve", "--model", "nobody@1")
    with pytest.raises(SystemExit):
        main(["serve"])
    assert "required: --model" in capsys.readouterr().err


def test_a_failed_import_leaves_no_artifact_and_frees_its_version_number(
    home: Path, tiny_lora_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real database failure after the copy: a trigger refuses the version row, as a full disk or a
    # lost connection would. Before, the stored copy stayed and `support@1` failed forever after.
    registry = Registry()
    with registry.engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON versions "
                "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
            )
        )
    assert "disk says no" in fails(capsys, "adapters", "import", "support", str(tiny_lora_dir))
    store = ArtifactStore()
    assert not store.fs.exists(store.path("support", 1))
    with registry.engine.begin() as connection:
        connection.execute(text("DROP TRIGGER refuse"))
    assert cli(capsys, "adapters", "import", "support", str(tiny_lora_dir)) == (0, "support@1\n", "")
    assert store.manifest("support", 1).version == 1


def test_promoting_a_stored_version_with_a_malformed_config_is_one_line(
    home: Path, tiny_lora_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version stored before imports checked configs (or by hand) is refused at promotion, naming it."""
    folder = variant(tiny_lora_dir, tmp_path / "stored", r="eight")
    registry, store = Registry(), ArtifactStore()

    store_as_is(registry, store, "old", folder, base_model="m", method="lora", serving="lora")
    line = fails(capsys, "adapters", "promote", "old-bot", "old@1")
    assert "old@1/adapter_config.json: r must be a whole number of at least 1, got 'eight'" in line
    assert Registry().aliases() == {}
