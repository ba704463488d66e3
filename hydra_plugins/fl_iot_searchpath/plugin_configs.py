"""Put the config dirs of installed fl-iot plugin packages on fl-iot's Hydra search path.

A plugin package declares where its configs live with one entry point, whose value is the
(importable) package holding them::

    [project.entry-points."fl_iot.configs"]
    my_plugin = "my_plugin.conf"

and ``my_plugin/conf/attack/my_attack.yaml`` then makes ``fl-iot attack=my_attack`` work with no
``hydra.searchpath`` override. The config dirs are appended after fl-iot's own ``conf/``, so a
plugin cannot replace a built-in config (Hydra takes the first match along the search path), as
the registries keep the built-in of a clashing name (:mod:`clients.registry`).

Hydra imports this module in every Hydra app of the environment; it only touches the search path
of apps whose primary config dir is fl-iot's ``conf/`` (the ``fl-iot`` command and the configs
:mod:`fl_iot.run_config` composes under ``flwr run``), and it imports nothing of fl-iot.
"""

from __future__ import annotations

import importlib.util
import logging
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENTRY_POINT_GROUP = "fl_iot.configs"
"""Entry-point group naming the config packages of fl-iot plugin packages."""

log = logging.getLogger("fl_iot.plugins")


class FlIotPluginConfigs(SearchPathPlugin):
    """Append ``pkg://<module>`` for every entry point of :data:`ENTRY_POINT_GROUP`."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Append each installed plugin's config package, if this is an fl-iot app."""
        if not _is_fl_iot_app(search_path):
            return
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if _is_config_package(entry_point):
                search_path.append(
                    provider=f"fl-iot-plugin:{entry_point.name}",
                    path=f"pkg://{entry_point.module}",
                )


def _is_fl_iot_app(search_path: ConfigSearchPath) -> bool:
    conf = fl_iot_conf_dir()
    if conf is None:
        return False
    return any(
        element.provider == "main"
        and not (element.path or "").startswith("pkg://")
        and Path((element.path or "").removeprefix("file://")).resolve() == conf
        for element in search_path.get_path()
    )


def fl_iot_conf_dir() -> Path | None:
    """fl-iot's ``conf/`` (next to the ``fl_iot`` package, as ``fl_iot.run_config`` finds it)."""
    spec = importlib.util.find_spec("fl_iot")  # does not import fl_iot
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent.parent / "conf"


def _is_config_package(entry_point: EntryPoint) -> bool:
    # Hydra's pkg:// source needs a regular package (with __init__.py); without one it finds no
    # config and `attack=<name>` would fail with no hint of the plugin's mistake.
    module = entry_point.module
    dist = getattr(entry_point, "dist", None)
    where = f"'{entry_point.name} = {module}' (group {ENTRY_POINT_GROUP}"
    where += f", package {dist.name} {dist.version})" if dist is not None else ")"
    try:
        spec = importlib.util.find_spec(module)
    except Exception as error:
        log.warning("fl-iot plugin configs %s skipped: %s: %s", where, type(error).__name__, error)
        return False
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not any((Path(location) / "__init__.py").is_file() for location in locations):
        log.warning(
            "fl-iot plugin configs %s skipped: %r is not an importable package with an "
            "__init__.py (the value must name the package that holds the config groups)",
            where,
            module,
        )
        return False
    return True
