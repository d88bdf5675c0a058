"""The package layout DESIGN.md asks for: folders mapped onto tuneloop.*, nothing shadowing stdlib."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("platform", "serve", "train", "monitoring", "demo")


def test_platform_folder_does_not_shadow_stdlib() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "Linux"
    # With the root on sys.path (python -m, PYTHONPATH, Ray's working_dir) the stdlib must still win.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.'); import platform; print(platform.system())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "Linux"


def _expected_modules() -> set[str]:
    """Every .py file under the four folders, as the path it must have inside the wheel."""
    names = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                names.add("tuneloop/" + path.relative_to(ROOT).as_posix())
    return names


@pytest.mark.slow
def test_wheel_contains_every_module(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tuneloop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected_modules()
    assert "tuneloop/platform/cli.py" in expected
    missing = expected - names
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"
    assert "tuneloop/platform/registry/migrations/script.py.mako" in names
    assert not any(n.startswith("tuneloop/platform/__init__") for n in names)


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:  # module level only: lazy imports inside functions are allowed
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _all_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _imports_in(folder: str, everywhere: bool = True) -> list[tuple[str, str]]:
    """(file, imported module) for every .py file under `folder`: inside functions too, or not."""
    found = _all_imports if everywhere else _module_level_imports
    return [
        (path.relative_to(ROOT).as_posix(), name)
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in sorted(found(path))
    ]


def test_platform_is_the_ground_floor() -> None:
    # Anywhere, lazily or not: the CLI names the stages' commands as strings in its table instead.
    stages = ("tuneloop.serve", "tuneloop.train", "tuneloop.monitoring", "tuneloop.demo")
    upward = [(path, name) for path, name in _imports_in("platform") if name.startswith(stages)]
    assert not upward, f"platform/ must not import the stages above it: {upward}"


def test_no_stage_imports_the_demo_and_serve_never_imports_train() -> None:
    for folder in ("platform", "serve", "train", "monitoring"):
        for path, name in _imports_in(folder):
            assert not name.startswith("tuneloop.demo"), f"{path} imports {name}: only the demo is above"
            if folder == "serve":
                assert not name.startswith("tuneloop.train"), (
                    f"{path} imports {name}: serve never imports train"
                )


def test_heavy_libraries_load_inside_functions_in_platform() -> None:
    heavy = ("torch", "vllm", "ray", "transformers", "peft")
    loaded = [
        (path, name)
        for path, name in _imports_in("platform", everywhere=False)
        if name.split(".")[0] in heavy
    ]
    assert not loaded, f"platform/ imports heavy libraries at module level: {loaded}"
