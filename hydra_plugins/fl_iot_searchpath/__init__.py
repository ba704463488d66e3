"""fl-iot's Hydra search-path plugin (see :mod:`hydra_plugins.fl_iot_searchpath.plugin_configs`).

This package lives in Hydra's ``hydra_plugins`` namespace package (no ``__init__.py`` in
``hydra_plugins/``), which is where Hydra discovers plugins.
"""
