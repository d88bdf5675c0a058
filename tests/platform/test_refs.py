"""`ADAPTER@N` parsed and printed in one place (platform/refs.py), and the registry's alias lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.plugins import Plugins
from tuneloop.platform.refs import VersionRef, adapter_name
from tuneloop.platform.registry import Registry


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("support@3", VersionRef("support", 3)),
        ("support-bot@12", VersionRef("support-bot", 12)),
        ("support", None),  # an alias or a model name
        ("support@", None),
        ("@3", None),
        ("support@v3", None),
        ("support@-1", None),
    ],
)
def test_parse(text: str, parsed: VersionRef | None) -> None:
    assert VersionRef.parse(text) == parsed
    if parsed is not None:
        assert str(parsed) == text


def test_of_insists_and_adapter_name_passes_other_names_through() -> None:
    with pytest.raises(ConfigError, match="expected ADAPTER@NUMBER"):
        VersionRef.of("support")
    assert adapter_name("support@3") == "support"
    assert adapter_name("support-bot") == "support-bot"


def test_adapter_of_an_alias(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    assert registry.adapter_of("support-bot") == "support-bot"  # nothing live: the alias's own name
    registry.add_version("support", base_model="/m", method="lora", store=lambda n: f"file:///v{n}")
    registry.promote("support-bot", "support@1")
    assert registry.adapter_of("support-bot") == "support"


class _Thing:
    name = "one"


def test_plugins_register_once_and_name_the_known_ones() -> None:
    plugins: Plugins[_Thing] = Plugins("widget", "widgets", __name__, [])
    assert plugins.register(_Thing) is _Thing
    assert plugins.lookup("one") is _Thing
    with pytest.raises(TypeError, match="widget 'one' is registered twice"):
        plugins.register(type("Other", (), {"name": "one"}))
    with pytest.raises(ConfigError, match="unknown widget 'two'; known widgets: one"):
        plugins.lookup("two")
