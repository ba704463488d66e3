"""The Flower ClientApp: one IoT device answering the server's messages.

``app`` is the ClientApp that ``flwr run`` loads (``[tool.flwr.app.components]``); it composes the
Hydra config from the run-config. The Hydra CLI builds the same app with
:func:`build_client_app` around the config it already composed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from fl_iot.device_runtime import (
    TrainingDeclinedError,
    WentOfflineError,
    device_id_of,
    evaluate_on_device,
    train_on_device,
)
from fl_iot.protocol import DECLINED_ERROR_CODE, OFFLINE_ERROR_CODE
from fl_iot.roster import roll_call_reply
from fl_iot.run_config import config_from_run_config

log = logging.getLogger(__name__)

ConfigSource = Callable[[Context], DictConfig]
"""Returns the composed config of the run a message belongs to."""


def build_client_app(config_source: ConfigSource) -> ClientApp:
    """Build the ClientApp whose handlers read the run's config from ``config_source``."""
    app = ClientApp()

    @app.query("roll_call")
    def roll_call(msg: Message, context: Context) -> Message:
        return roll_call_reply(msg, device_id_of(context))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config_source(context)
        try:
            content = train_on_device(cfg, device_id_of(context), msg.content, context.state)
        except TrainingDeclinedError as declined:
            log.info("%s", declined)
            return Message(Error(code=DECLINED_ERROR_CODE, reason=str(declined)), reply_to=msg)
        except WentOfflineError as offline:
            return Message(Error(code=OFFLINE_ERROR_CODE, reason=str(offline)), reply_to=msg)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = config_source(context)
        return Message(
            content=evaluate_on_device(cfg, device_id_of(context), msg.content), reply_to=msg
        )

    return app


def _config_from_context(context: Context) -> DictConfig:
    return config_from_run_config(context.run_config)


app = build_client_app(_config_from_context)
