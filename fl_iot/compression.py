"""The ``compression`` config group: which codec each device class's updates travel in.

``compression=none`` (the default) sends full models. Any other option names a codec and its
parameters (``conf/compression/*.yaml``); ``compression.classes.<device class>`` gives a class a
setting of its own (a wearable on BLE compresses harder than a gateway on Ethernet), with
``codec: none`` to send that class uncompressed. ``compression.downlink`` compresses the global
model on its way to the devices (``float16`` or ``qsgd``; one setting for the fleet). The codecs
and their wire format are :mod:`clients.compression`'s; this module only turns the config into
their settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clients.compression import Compression, Float16, Qsgd, TopK
from clients.compression.codecs import Codec
from fl_iot.errors import ConfigError

CODECS = ("none", "float16", "qsgd", "topk")


@dataclass
class CodecConfig:
    """One codec and its parameters (only the codec's own are read)."""

    codec: str = "none"
    bits: int = 8  # qsgd: 8 or 4 bits a value
    chunk_size: int = 512  # qsgd: values per float32 scale
    fraction: float = 0.01  # topk: share of the values sent
    value_bits: int = 16  # topk: 16 (float16 values) or 8 (quantised with one scale)
    error_feedback: bool = False  # keep what was not sent and add it to the next update


@dataclass
class CompressionConfig(CodecConfig):
    """The fleet's codec, and per device class settings that replace it."""

    name: str = "none"
    # The global model's codec on the way down (a CodecConfig's fields; none, float16 or qsgd),
    # one for the fleet: every device gets the same bytes.
    downlink: dict[str, Any] = field(default_factory=dict)
    # {device class: a CodecConfig's fields}; typed Any so that a whole class's setting can be
    # given on the command line (+compression.classes.wearable={codec:qsgd,bits:4}), which
    # OmegaConf refuses for a dict of dataclasses. compression_config() types it.
    classes: dict[str, Any] = field(default_factory=dict)


class CompressionSettings(NamedTuple):
    """``cfg.compression`` typed: the fleet's codec, each class's own, the downlink's."""

    fleet: CompressionConfig
    classes: dict[str, CodecConfig]
    downlink: CodecConfig


def compression_config(cfg: DictConfig) -> CompressionSettings:
    """``cfg.compression`` typed (no section at all: ``none`` everywhere).

    Raises
    ------
    ConfigError
        For a key that no codec setting has, naming it.
    """
    section = cfg.get("compression") or {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(CompressionConfig), section)
        typed = OmegaConf.to_object(merged)
        assert isinstance(typed, CompressionConfig)
        classes = {str(name): _codec_config(setting) for name, setting in typed.classes.items()}
        downlink = _codec_config(typed.downlink)
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"compression: {str(error).splitlines()[0]}; a codec setting has the keys "
            f"{', '.join(f.name for f in fields(CodecConfig))}"
        ) from None
    return CompressionSettings(typed, classes, downlink)


def _codec_config(setting: Any) -> CodecConfig:
    one = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CodecConfig), setting))
    assert isinstance(one, CodecConfig)
    return one


def downlink_compression(cfg: DictConfig) -> Compression | None:
    """The global model's codec on the way down (``compression.downlink``); ``None``: whole.

    Raises
    ------
    ConfigError
        For top-k (it would zero most of the model) or a setting :func:`build_codec` refuses.
    """
    setting = compression_config(cfg).downlink
    if setting.codec == "topk":
        raise ConfigError(
            "compression.downlink.codec=topk would send a model with most of its weights zero; "
            "valid choices: none, float16, qsgd"
        )
    return build_codec(setting, "compression.downlink")


def build_codec(setting: CodecConfig, path: str) -> Compression | None:
    """The :class:`Compression` of one setting; ``None`` for ``codec: none``.

    Raises
    ------
    ConfigError
        For an unknown codec or a parameter it refuses, naming ``path``.
    """
    if setting.codec not in CODECS:
        raise ConfigError(
            f"unknown codec {setting.codec!r} in {path}.codec; valid choices: {', '.join(CODECS)}"
        )
    _check_parameters(setting, path)
    if setting.codec == "none":
        return None
    codec: Codec
    try:
        if setting.codec == "float16":
            codec = Float16()
        elif setting.codec == "qsgd":
            codec = Qsgd(bits=setting.bits, chunk_size=setting.chunk_size)
        else:
            codec = TopK(fraction=setting.fraction, value_bits=setting.value_bits)
    except ValueError as refusal:
        raise ConfigError(f"{path}: {refusal}") from None
    return Compression(_name(setting), codec, bool(setting.error_feedback))


def _check_parameters(setting: CodecConfig, path: str) -> None:
    """Refuse a parameter out of range whichever codec is chosen (a typo must not wait)."""
    problems = [
        (setting.bits in (4, 8), f"{path}.bits must be 4 or 8, got {setting.bits!r}"),
        (
            setting.chunk_size >= 1,
            f"{path}.chunk_size must be an int >= 1, got {setting.chunk_size!r}",
        ),
        (
            math.isfinite(setting.fraction) and 0 < setting.fraction <= 1,
            f"{path}.fraction must be in (0, 1], got {setting.fraction!r}",
        ),
        (
            setting.value_bits in (8, 16),
            f"{path}.value_bits must be 8 or 16, got {setting.value_bits!r}",
        ),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


def _name(setting: CodecConfig) -> str:
    """A name that differs whenever the decoder would: the server checks it on every reply."""
    if setting.codec == "qsgd":
        return f"qsgd{setting.bits}-chunk{setting.chunk_size}"
    if setting.codec == "topk":
        return f"topk{setting.fraction:g}-v{setting.value_bits}"
    return setting.codec


def compression_by_class(cfg: DictConfig) -> dict[str, Compression | None]:
    """Every device class's setting (``None``: uncompressed)."""
    config, classes, _ = compression_config(cfg)
    unknown = sorted(set(classes) - set(cfg.device_classes))
    if unknown:
        raise ConfigError(
            f"unknown device class {unknown[0]!r} in compression.classes; valid choices: "
            f"{', '.join(sorted(cfg.device_classes))}"
        )
    fleet = build_codec(config, "compression")
    return {
        name: (
            build_codec(classes[name], f"compression.classes.{name}") if name in classes else fleet
        )
        for name in cfg.device_classes
    }
