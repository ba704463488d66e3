"""The Flower ClientApp: one IoT device answering the server's messages.

``app`` is the ClientApp that ``flwr run`` loads (``[tool.flwr.app.components]``); it composes the
Hydra config from the run-config. The Hydra CLI builds the same app with
:func:`build_client_app` around the config it already composed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from clients.compression import Compression, compression_mod, model_decoder_mod
from clients.compression.wire import CompressionOf
from clients.gateway import gateway_mod
from fl_iot.device_runtime import (
    RunContext,
    TrainingDeclinedError,
    WentOfflineError,
    data_path_of,
    device_id_of,
    devices_served,
    evaluate_on_device,
    run_context,
    train_on_device,
)
from fl_iot.device_state import DeviceStateStore, persisted_state_mod, server_round_of
from fl_iot.protocol import DECLINED_ERROR_CODE, OFFLINE_ERROR_CODE
from fl_iot.roster import roll_call_reply
from fl_iot.run_config import config_from_run_config

log = logging.getLogger(__name__)

ConfigSource = Callable[[Context], DictConfig]
"""Returns the composed config of the run a message belongs to."""


def build_client_app(config_source: ConfigSource, state_dir: Path | None = None) -> ClientApp:
    """Build the ClientApp whose handlers read the run's config from ``config_source``.

    Four mods wrap the handlers, per device. Outermost, on a gateway node (``gateways`` in
    the config), :func:`clients.gateway.gateway_mod` runs the rest once for each device a
    message addresses, with the device's own identity and state (and, with
    ``gateways.mode=aggregate``, answers with their average). Next, with ``state_dir`` (the
    simulation gives its run's ``checkpoint/devices``), each device keeps its ``context.state``
    there after every training round and reads it back before the next
    (:func:`fl_iot.device_state.persisted_state_mod`), so that a resumed run continues every
    device's DP ledger, partial update and residual; without one (``flwr run`` on SuperNodes)
    the state lives in memory for one Flower run, as Flower keeps it. Then a compressed global
    model (``compression.downlink``) is decoded (:func:`clients.compression.model_decoder_mod`).
    Innermost, the device class's codec (``compression``) encodes each train reply
    (:func:`clients.compression.compression_mod`), keeping its error-feedback residual in
    ``context.state``.

    A node whose node-config has ``data-path`` reads only the device export(s) there
    (:func:`fl_iot.device_runtime.data_path_of`) instead of loading the whole dataset.
    """
    mods = [
        model_decoder_mod(lambda msg, context: _run_of(config_source, context).downlink),
        compression_mod(_compression_for(config_source), seed_of=_codec_seed(config_source)),
    ]
    if state_dir is not None:
        mods.insert(0, persisted_state_mod(DeviceStateStore(state_dir), device_id_of))
    mods.insert(
        0,
        gateway_mod(
            lambda context: devices_served(context, _run_of(config_source, context)),
            aggregation_of=lambda context: _run_of(config_source, context).aggregation,
            budget_of=lambda context: _run_of(config_source, context).message_budget_s,
        ),
    )
    app = ClientApp(mods=mods)

    @app.query("roll_call")
    def roll_call(msg: Message, context: Context) -> Message:
        return roll_call_reply(msg, device_id_of(context))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config_source(context)
        try:
            content = train_on_device(
                cfg, device_id_of(context), msg.content, context.state, data_path_of(context)
            )
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
            content=evaluate_on_device(
                cfg, device_id_of(context), msg.content, data_path_of(context)
            ),
            reply_to=msg,
        )

    return app


def _run_of(config_source: ConfigSource, context: Context) -> RunContext:
    """The run of a message, with the node's own exported data if it has any."""
    return run_context(config_source(context), data_path_of(context))


def _compression_for(config_source: ConfigSource) -> CompressionOf:
    def compression_for(msg: Message, context: Context) -> Compression | None:
        run = _run_of(config_source, context)
        return run.compression[run.federation[device_id_of(context)].device_class]

    return compression_for


def _codec_seed(config_source: ConfigSource) -> Callable[[Message, Context], int]:
    """Seeds a device's stochastic rounding per round, apart from its training's seed."""

    def seed(msg: Message, context: Context) -> int:
        entropy = [int(config_source(context).seed), device_id_of(context), server_round_of(msg)]
        return int(np.random.SeedSequence([*entropy, CODEC_PHASE]).generate_state(1)[0])

    return seed


CODEC_PHASE = 1


def _config_from_context(context: Context) -> DictConfig:
    return config_from_run_config(context.run_config)


app = build_client_app(_config_from_context)
