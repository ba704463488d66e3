"""Datasets, their loaders and their partition among devices.

Importing this package registers the built-in loaders in :data:`DATASETS`.
"""

# Importing a loader module registers it in DATASETS.
from clients.data import LabeledData
from fl_iot.data import cmapss as _cmapss  # noqa: F401
from fl_iot.data import mitbih as _mitbih  # noqa: F401
from fl_iot.data import occupancy as _occupancy  # noqa: F401
from fl_iot.data import vehicle as _vehicle  # noqa: F401
from fl_iot.data import watch as _watch  # noqa: F401
from fl_iot.data.base import DATASETS, RawData, SourceDataset
from fl_iot.data.export import (
    DeviceExports,
    ExportedDataError,
    PartitionSpec,
    ServerShare,
    read_device_exports,
    read_server_share,
    write_device_partition,
    write_server_share,
)
from fl_iot.data.federated import FederatedData, load_federated_data, load_source
from fl_iot.data.paths import DATA_ROOT_ENV
from fl_iot.data.run_data import DatasetInfo, RunData

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "DatasetInfo",
    "DeviceExports",
    "ExportedDataError",
    "FederatedData",
    "LabeledData",
    "PartitionSpec",
    "RawData",
    "RunData",
    "ServerShare",
    "SourceDataset",
    "load_federated_data",
    "load_source",
    "read_device_exports",
    "read_server_share",
    "write_device_partition",
    "write_server_share",
]
