"""Maps the repository's top-level folders onto the `tuneloop.*` namespace.

`platform/` cannot hold an `__init__.py` (it would shadow the standard library's `platform`
module whenever the repository root is on sys.path), so packages are computed here from the
folders rather than discovered.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
FOLDERS = ("platform", "serve", "train", "monitoring", "demo")
DATA_SUFFIXES = ("*.json", "*.yaml", "*.yml", "*.ini", "*.mako", "*.jinja", "py.typed")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder in FOLDERS:
        for path in sorted([ROOT / folder, *(ROOT / folder).rglob("*")]):
            if not path.is_dir() or path.name == "__pycache__":
                continue
            if not any(path.glob("*.py")) and not any(path.glob("*.json")) and not any(path.glob("*.yaml")):
                continue
            rel = path.relative_to(ROOT)
            name = ".".join(("tuneloop", *rel.parts))
            packages.append(name)
            package_dir[name] = rel.as_posix()
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={name: list(DATA_SUFFIXES) for name in PACKAGES},
)
