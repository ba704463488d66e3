"""Update compression: codecs, the client mod that encodes, the function that decodes."""

from clients.compression.codecs import Codec, Float16, Qsgd, TopK
from clients.compression.wire import (
    COMPRESSED,
    RESIDUAL,
    Compression,
    compression_mod,
    decode_update,
    encode_update,
    is_compressed,
)

__all__ = [
    "COMPRESSED",
    "RESIDUAL",
    "Codec",
    "Compression",
    "Float16",
    "Qsgd",
    "TopK",
    "compression_mod",
    "decode_update",
    "encode_update",
    "is_compressed",
]
