"""The Flower ServerApp: the federated study's server.

``app`` is the ServerApp that ``flwr run`` loads (``[tool.flwr.app.components]``); it composes the
Hydra config from the run-config and writes results to the run-config's ``output-dir`` (default
``./outputs/flwr-run-<run id>`` under the SuperLink's working directory). With the run-config's
``server-data`` it reads only the server's exported share of the data
(:mod:`fl_iot.data.export`) instead of the whole dataset. The Hydra CLI builds the same app with
:func:`build_server_app` around the config it already composed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fl_iot.roster import PollingGrid
from fl_iot.run_config import SERVER_DATA_KEY, config_from_run_config
from fl_iot.server import RunResult, run_server


def build_server_app(
    config_source: Callable[[Context], DictConfig],
    output_dir_source: Callable[[Context], Path],
    result: RunResult | None = None,
    show_progress: bool = False,
    poll_interval_s: float | None = None,
) -> ServerApp:
    """Build the ServerApp.

    ``result`` (when given) receives the summary and final model. ``show_progress`` prints
    fl-iot's per-round progress to stderr, for processes where nobody configured logging (the
    ``flwr run`` ServerApp process, whose output Flower streams to ``flwr run --stream``).
    With ``poll_interval_s``, replies are pulled that often instead of at the grid's own pace
    (:class:`fl_iot.roster.PollingGrid`).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if show_progress:
            _log_progress_to_stderr()
        run_server(
            grid if poll_interval_s is None else PollingGrid(grid, poll_interval_s),
            config_source(context),
            output_dir_source(context),
            result,
            server_data=_server_data(context),
        )

    return app


def _output_dir(context: Context) -> Path:
    configured = str(context.run_config.get("output-dir") or "")
    return Path(configured) if configured else Path.cwd() / "outputs" / f"flwr-run-{context.run_id}"


def _server_data(context: Context) -> Path | None:
    configured = str(context.run_config.get(SERVER_DATA_KEY) or "")
    return Path(configured).expanduser() if configured else None


def _log_progress_to_stderr() -> None:
    logger = logging.getLogger("fl_iot")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s fl-iot: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


app = build_server_app(
    lambda context: config_from_run_config(context.run_config),
    _output_dir,
    show_progress=True,
    poll_interval_s=0.1,
)
