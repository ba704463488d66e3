"""Update compression: codecs, the client mods, the functions that decode on the server.

Uplink: :func:`compression_mod` encodes a device's update, :func:`decode_update` decodes it.
Downlink: :func:`encode_model` compresses the global model, :func:`model_decoder_mod` decodes it
on the device.
"""

from clients.compression.codecs import Codec, Float16, Qsgd, TopK
from clients.compression.wire import (
    COMPRESSED,
    COMPRESSED_MODEL,
    RESIDUAL,
    Compression,
    compression_mod,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    is_compressed,
    model_decoder_mod,
)

__all__ = [
    "COMPRESSED",
    "COMPRESSED_MODEL",
    "RESIDUAL",
    "Codec",
    "Compression",
    "Float16",
    "Qsgd",
    "TopK",
    "compression_mod",
    "decode_model",
    "decode_update",
    "encode_model",
    "encode_update",
    "is_compressed",
    "model_decoder_mod",
]
