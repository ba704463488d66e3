"""Entry-point plugins in :class:`clients.registry.Registry`: broken, clashing, duplicate."""

from __future__ import annotations

import logging
from importlib import metadata
from types import SimpleNamespace

import pytest

from clients.registry import Registry
from fl_iot.errors import ConfigError, UnknownNameError
from fl_iot.models import Mlp

GROUP = "fl_iot.test_widgets"


def _entry_point(name: str, value: str, package: str | None = None) -> metadata.EntryPoint:
    entry_point = metadata.EntryPoint(name, value, GROUP)
    if package is not None:
        entry_point = entry_point._for(SimpleNamespace(name=package, version="1.0"))
    return entry_point


@pytest.fixture
def installed(monkeypatch):
    """Replace the installed entry points of GROUP by the list this fixture returns."""
    found: list[metadata.EntryPoint] = []
    monkeypatch.setattr(
        "clients.registry.entry_points", lambda group: list(found) if group == GROUP else []
    )
    return found


@pytest.fixture
def raising_module(tmp_path, monkeypatch):
    """An importable module whose import raises, as a plugin with a bug at import time would."""
    (tmp_path / "fl_iot_test_raising_plugin.py").write_text("raise RuntimeError('bug at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fl_iot_test_raising_plugin"


def test_a_broken_plugin_is_reported_by_name_and_skipped_and_the_others_load(
    installed, raising_module, caplog
):
    installed += [
        _entry_point("missing_module", "fl_iot_no_such_module:Thing", "broken-one"),
        _entry_point("missing_attr", "fl_iot.models:NoSuchModel", "broken-two"),
        _entry_point("raises", f"{raising_module}:Thing", "broken-three"),
        _entry_point("good", "fl_iot.models:Mlp", "good-package"),
    ]
    registry: Registry[object] = Registry("widget", GROUP)
    registry.register("builtin", 1)

    with caplog.at_level(logging.WARNING, logger="clients.registry"):
        assert registry.get("good") is Mlp
    assert registry.names() == ["builtin", "good"]

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    for name, value, package, error in [
        ("missing_module", "fl_iot_no_such_module:Thing", "broken-one", "ModuleNotFoundError"),
        ("missing_attr", "fl_iot.models:NoSuchModel", "broken-two", "AttributeError"),
        ("raises", f"{raising_module}:Thing", "broken-three", "RuntimeError: bug at import"),
    ]:
        (message,) = [w for w in warnings if f"'{name} = {value}'" in w]
        assert f"package {package} 1.0" in message
        assert error in message


def test_looking_up_a_broken_plugin_says_why_it_is_unavailable(installed):
    installed += [
        _entry_point("broken", "fl_iot_no_such_module:Thing", "broken-one"),
        _entry_point("good", "fl_iot.models:Mlp"),
    ]
    registry: Registry[object] = Registry("widget", GROUP)

    with pytest.raises(ConfigError) as caught:
        registry.get("broken")
    message = str(caught.value)
    assert not isinstance(caught.value, UnknownNameError)
    assert "widget 'broken' is installed but could not be loaded" in message
    assert "fl_iot_no_such_module:Thing" in message and "broken-one" in message
    assert "ModuleNotFoundError" in message
    assert "valid choices now: good" in message
    # An unrelated unknown name still lists the good plugin.
    with pytest.raises(UnknownNameError, match="unknown widget 'other'; valid choices: good"):
        registry.get("other")


def test_a_plugin_named_like_a_built_in_is_ignored_with_a_warning(installed, caplog):
    installed.append(_entry_point("builtin", "fl_iot.models:Mlp", "clashing-package"))
    registry: Registry[object] = Registry("widget", GROUP)
    registry.register("builtin", 1)

    with caplog.at_level(logging.WARNING, logger="clients.registry"):
        assert registry.names() == ["builtin"]
    assert registry.get("builtin") == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert "'builtin = fl_iot.models:Mlp'" in message
    assert "clashing-package" in message
    assert "built-in" in message


def test_a_built_in_registered_after_the_plugins_loaded_still_wins(installed, caplog):
    installed.append(_entry_point("late", "fl_iot.models:Mlp", "clashing-package"))
    registry: Registry[object] = Registry("widget", GROUP)
    assert registry.get("late") is Mlp

    with caplog.at_level(logging.WARNING, logger="clients.registry"):
        registry.register("late", 2)
    assert registry.get("late") == 2
    assert registry.names() == ["late"]
    assert "'late'" in caplog.records[0].getMessage()


def test_of_two_plugins_with_one_name_the_first_is_kept_with_a_warning(installed, caplog):
    installed += [
        _entry_point("twin", "fl_iot.models:Mlp", "first-package"),
        _entry_point("twin", "fl_iot.models:NoSuchModel", "second-package"),
    ]
    registry: Registry[object] = Registry("widget", GROUP)

    with caplog.at_level(logging.WARNING, logger="clients.registry"):
        assert registry.get("twin") is Mlp
    (message,) = [r.getMessage() for r in caplog.records]
    assert "second-package" in message and "first-package" in message


def test_built_ins_are_found_without_loading_entry_points(monkeypatch):
    def fail(group):
        raise AssertionError("entry points scanned for a built-in name")

    monkeypatch.setattr("clients.registry.entry_points", fail)
    registry: Registry[int] = Registry("widget", GROUP)
    registry.register("builtin", 1)

    assert registry.get("builtin") == 1


def test_entry_points_are_scanned_once(monkeypatch):
    scans = []

    def found(group):
        scans.append(group)
        return [_entry_point("good", "fl_iot.models:Mlp")] if group == GROUP else []

    monkeypatch.setattr("clients.registry.entry_points", found)
    registry: Registry[object] = Registry("widget", GROUP)
    registry.names()
    registry.names()
    assert registry.get("good") is Mlp
    with pytest.raises(UnknownNameError):
        registry.get("other")
    assert scans == [GROUP]
