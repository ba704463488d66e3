"""The Flower ClientApp: one IoT device answering the server's messages.

``app`` is the ClientApp that ``flwr run`` loads (``[tool.flwr.app.components]``); it composes the
Hydra config from the run-config. The Hydra CLI builds the same app with
:func:`build_client_app` around the config it already composed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from fl_iot import protocol as P
from fl_iot.device_runtime import (
    TrainingDeclinedError,
    WentOfflineError,
    device_id_of,
    evaluate_on_device,
    train_on_device,
)
from fl_iot.device_state import DeviceStateStore, restore_state
from fl_iot.protocol import DECLINED_ERROR_CODE, OFFLINE_ERROR_CODE
from fl_iot.roster import roll_call_reply
from fl_iot.run_config import config_from_run_config

log = logging.getLogger(__name__)

ConfigSource = Callable[[Context], DictConfig]
"""Returns the composed config of the run a message belongs to."""


def build_client_app(config_source: ConfigSource, state_dir: Path | None = None) -> ClientApp:
    """Build the ClientApp whose handlers read the run's config from ``config_source``.

    With ``state_dir`` (the simulation gives its run's ``checkpoint/devices``), each device keeps
    its ``context.state`` there after every training round and reads it back before the next
    (:class:`fl_iot.device_state.DeviceStateStore`), so that a resumed run continues every
    device's DP ledger and partial update. Without one (``flwr run`` on SuperNodes), the state
    lives in memory for one Flower run, as Flower keeps it.
    """
    app = ClientApp()

    @app.query("roll_call")
    def roll_call(msg: Message, context: Context) -> Message:
        return roll_call_reply(msg, device_id_of(context))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config_source(context)
        device_id = device_id_of(context)
        store = DeviceStateStore(state_dir) if state_dir is not None else None
        server_round = _server_round(msg)
        if store is not None:
            restore_state(context.state, store.load(device_id, server_round))
        try:
            content = train_on_device(cfg, device_id, msg.content, context.state)
        except TrainingDeclinedError as declined:
            log.info("%s", declined)
            return Message(Error(code=DECLINED_ERROR_CODE, reason=str(declined)), reply_to=msg)
        except WentOfflineError as offline:
            return Message(Error(code=OFFLINE_ERROR_CODE, reason=str(offline)), reply_to=msg)
        finally:
            if store is not None:
                store.save(device_id, server_round, context.state)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = config_source(context)
        return Message(
            content=evaluate_on_device(cfg, device_id_of(context), msg.content), reply_to=msg
        )

    return app


def _server_round(msg: Message) -> int:
    config = msg.content.get(P.CONFIG)
    value = config.get(P.SERVER_ROUND, 0) if isinstance(config, ConfigRecord) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _config_from_context(context: Context) -> DictConfig:
    return config_from_run_config(context.run_config)


app = build_client_app(_config_from_context)
