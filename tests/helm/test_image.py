"""The container image installs exactly the tested set, and nothing installs packages at run time.

No Docker engine runs here, so the Dockerfile is read, not built: every `pip install` in it is pinned
by the constraints file (or is one exact `--no-deps` pin), the drivers the chart's URLs need are in
the extras it installs and pinned in that file, and the venv these tests run in is that set.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tuneloop.platform import settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "helm" / "Dockerfile"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned exactly"
            out[canonicalize_name(name)] = version
    return out


def dockerfile_commands() -> list[str]:
    """The Dockerfile's RUN commands with line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"no ARG {name}= in the Dockerfile"
    return match.group(1)


def test_every_pip_install_in_the_image_is_pinned() -> None:
    installs = [
        shlex.split(part.strip())
        for command in dockerfile_commands()
        for part in re.split(r"&&|\|\||;", command)
        if re.search(r"\bpip install\b", part)
    ]
    assert installs, "the Dockerfile installs nothing?"
    for argv in installs:
        args = argv[argv.index("install") + 1 :]
        if "--no-deps" in args:
            (requirement,) = [a for a in args if not a.startswith("-")]
            assert Requirement(requirement).specifier and str(Requirement(requirement).specifier).startswith(
                "=="
            ), argv
        else:
            assert args[:2] == ["-c", "/src/$CONSTRAINTS"], f"not under the constraints file: {argv}"
    assert (ROOT / arg_default("CONSTRAINTS")).is_file()


def test_the_drivers_the_chart_needs_are_pinned_in_the_tested_set() -> None:
    constraints = pins(ROOT / arg_default("CONSTRAINTS"))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed_extras = re.search(r'"/src\[\$\{EXTRAS\},([^\]]+)\]"', " ".join(dockerfile_commands()))
    assert installed_extras, "the image installs no driver extras"
    names = installed_extras.group(1).split(",")
    assert {"postgres", "s3"} <= set(names)
    for extra in names:
        for line in extras[extra]:
            requirement = Requirement(line)
            pinned = constraints.get(canonicalize_name(requirement.name))
            assert pinned is not None, f"{requirement.name} (extra {extra}) is not pinned in the constraints"
            assert requirement.specifier.contains(pinned), f"{requirement} does not admit the pin {pinned}"
            for sub in requirement.extras:  # psycopg[binary] installs psycopg-binary
                assert canonicalize_name(f"{requirement.name}-{sub}") in constraints, (requirement, sub)


def test_the_venv_under_test_is_the_constraints_set() -> None:
    # The set the image installs is the set these tests ran on: every pinned distribution that is
    # installed here has the pinned version, and the drivers are installed.
    constraints = pins(ROOT / "constraints" / "cpu.txt")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {n: (installed[n], v) for n, v in constraints.items() if n in installed and installed[n] != v}
    assert not wrong, f"installed != pinned (run make install): {wrong}"
    for driver in ("psycopg", "psycopg-binary", "s3fs"):
        assert driver in installed, f"{driver} is pinned but not installed: run make install"


def test_nothing_is_installed_at_run_time() -> None:
    env = re.search(r"^ENV .*TUNELOOP_PIP_INSTALL=0", DOCKERFILE.read_text(), re.MULTILINE | re.DOTALL)
    assert env, "the image must turn run-time installs off"
    assert "TUNELOOP_PIP_INSTALL" in {v.name for v in settings.ALL}
    # Only the model and sample-data wheels of `models pull` and the demo are ever pip-installed, by
    # one function that honours that setting; no server module starts pip.
    starters = []
    for folder in ("platform", "serve", "monitoring", "train"):
        for path in (ROOT / folder).rglob("*.py"):
            if re.search(r"""["']pip["']\s*,\s*["']install["']""", path.read_text()):
                starters.append(path.relative_to(ROOT).as_posix())
    assert starters == ["platform/basemodels.py"]
