"""Fixtures the monitoring tests share (a module may define its own `registry` to start elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.platform.registry import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A registry of its own with one LoRA version, `support@1`, live under the alias `support`."""
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.add_version("support", base_model="m", method="lora", store=lambda n: f"mem://{n}")
    reg.promote("support", "support@1")
    return reg
