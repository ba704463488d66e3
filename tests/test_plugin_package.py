"""A real third-party plugin package, installed and used by name: ``fl-iot attack=marker``.

``tests/fixtures/marker_attack_plugin`` is built and installed offline (``pip --no-index``) into a
temporary directory put on ``PYTHONPATH``, never into the venv, so no other test sees it. Its two
entry points, ``fl_iot.attacks`` (the class) and ``fl_iot.configs`` (the package holding
``attack/marker.yaml``), are all it declares: the run needs no ``hydra.searchpath`` override.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

from hydra_plugins.fl_iot_searchpath import plugin_configs
from tests.conftest import REPO_ROOT
from tests.e2e import TINY

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "marker_attack_plugin"
BIN = Path(sys.executable).parent
NOT_INSTALLED_HINT = (
    "fl-iot's Hydra search-path plugin was not found: is fl-iot installed with hydra_plugins/ "
    "(re-run `make install` after a pyproject.toml change)?"
)


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory):
    """Environment variables under which the marker plugin package is installed."""
    work = tmp_path_factory.mktemp("marker-plugin")
    source, site = work / "source", work / "site"
    # Build from a copy: pip builds in the source tree and would leave build/ and *.egg-info.
    shutil.copytree(FIXTURE, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "fl_iot_marker_attack" / "conf" / "attack" / "marker.yaml").is_file()
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    yield {**os.environ, "PYTHONPATH": path, "FL_IOT_DATA_ROOT": ""}
    shutil.rmtree(work, ignore_errors=True)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` outside the repository, so that nothing is imported from its checkout."""
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def fl_iot(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the installed ``fl-iot`` console script."""
    return run([str(BIN / "fl-iot"), *args], cwd, env)


@pytest.mark.e2e
def test_an_installed_plugin_attack_runs_by_name(plugin_env, tmp_path):
    marker = tmp_path / "marker.txt"
    run_dir = tmp_path / "run"

    result = fl_iot(
        *TINY,
        "attack=marker",
        "attack.fraction=0.25",
        f"attack.options.marker={marker}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=plugin_env,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["attack"] == {
        "name": "marker",
        "fraction": 0.25,
        "options": {"marker": str(marker), "factor": 3},
    }
    attackers = summary["federation"]["attackers"]
    assert len(attackers) == 1
    # Every attacker ran the plugin's hook in every round, and no honest device did.
    calls = sorted(tuple(map(int, line.split())) for line in marker.read_text().splitlines())
    assert calls == [(device, r) for device in sorted(attackers) for r in (1, 2)]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        devices = json.loads(line)["devices"]
        assert sorted(int(d) for d, m in devices.items() if m["attacker"]) == attackers


@pytest.mark.e2e
def test_an_unknown_attack_lists_the_plugin_among_the_choices(plugin_env, tmp_path):
    bare_env = {k: v for k, v in plugin_env.items() if k != "PYTHONPATH"}

    def attempt(env):
        return fl_iot("attack=no_such_attack", f"hydra.run.dir={tmp_path}", cwd=tmp_path, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        with_plugin, without = pool.map(attempt, [plugin_env, bare_env])

    for result in (with_plugin, without):
        assert result.returncode != 0
        assert "Could not find 'attack/no_such_attack'" in result.stderr
        assert "\tsign_flip\n" in result.stderr
    assert "\tmarker\n" in with_plugin.stderr, NOT_INSTALLED_HINT + "\n" + with_plugin.stderr
    assert "\tmarker\n" not in without.stderr


@pytest.mark.e2e
def test_flwr_run_composition_finds_the_plugin_configs(plugin_env, tmp_path):
    # Under `flwr run` the apps compose the config with fl_iot.run_config, outside a Hydra app.
    code = (
        "from fl_iot.run_config import config_from_run_config\n"
        "cfg = config_from_run_config({'attack': 'marker', 'overrides': 'attack.fraction=0.5'})\n"
        "print(cfg.attack.name, cfg.attack.fraction, cfg.attack.options.factor)\n"
    )
    result = run([sys.executable, "-c", code], tmp_path, plugin_env)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["marker", "0.5", "3"]


# ---- the search-path plugin on its own ----------------------------------------------------------


def _search_path(main: str) -> ConfigSearchPathImpl:
    search_path = ConfigSearchPathImpl()
    search_path.append("hydra", "pkg://hydra.conf")
    search_path.append("main", main)
    return search_path


@pytest.fixture
def config_entry_points(monkeypatch):
    found: list[metadata.EntryPoint] = []
    monkeypatch.setattr(
        plugin_configs,
        "entry_points",
        lambda group: list(found) if group == plugin_configs.ENTRY_POINT_GROUP else [],
    )
    return found


def test_plugin_config_packages_are_appended_after_fl_iot_conf(config_entry_points):
    # Any regular package stands in for a plugin's config package here.
    config_entry_points.append(
        metadata.EntryPoint("demo", "tests", plugin_configs.ENTRY_POINT_GROUP)
    )
    search_path = _search_path(str(REPO_ROOT / "conf"))

    plugin_configs.FlIotPluginConfigs().manipulate_search_path(search_path)

    assert [(e.provider, e.path) for e in search_path.get_path()] == [
        ("hydra", "pkg://hydra.conf"),
        ("main", str(REPO_ROOT / "conf")),
        ("fl-iot-plugin:demo", "pkg://tests"),
    ]


def test_other_hydra_apps_search_paths_are_left_alone(config_entry_points, tmp_path):
    config_entry_points.append(
        metadata.EntryPoint("demo", "tests", plugin_configs.ENTRY_POINT_GROUP)
    )
    search_path = _search_path(str(tmp_path))

    plugin_configs.FlIotPluginConfigs().manipulate_search_path(search_path)

    assert [e.provider for e in search_path.get_path()] == ["hydra", "main"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("fl_iot_no_such_plugin.conf", "ModuleNotFoundError"),
        ("tests.e2e", "is not an importable package with an __init__.py"),
    ],
)
def test_a_bad_config_entry_point_is_reported_and_skipped(
    config_entry_points, caplog, value, reason
):
    group = plugin_configs.ENTRY_POINT_GROUP
    config_entry_points += [
        metadata.EntryPoint("bad", value, group),
        metadata.EntryPoint("good", "tests", group),
    ]
    search_path = _search_path(str(REPO_ROOT / "conf"))

    with caplog.at_level(logging.WARNING, logger="fl_iot.plugins"):
        plugin_configs.FlIotPluginConfigs().manipulate_search_path(search_path)

    assert [e.provider for e in search_path.get_path()][-1] == "fl-iot-plugin:good"
    assert len(search_path.get_path()) == 3
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"'bad = {value}'" in message and reason in message
