"""Read back what W&B wrote to an offline run file (``run-<id>.wandb``), for tests.

The file is a W&B header (``:W&B`` + 3 bytes) followed by a LevelDB-style log: 32 KiB blocks of
chunks ``crc32 (4) | length (2) | type (1) | data``, where types 1 (full) and 4 (last) end a record.
Each record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = 7
FULL, LAST = 1, 4


def read_records(path: Path) -> Iterator[Any]:
    """Yield every protobuf record of an offline ``.wandb`` file."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    position, pending = 7, b""
    while position + CHUNK_HEADER <= len(data):
        if BLOCK_SIZE - position % BLOCK_SIZE < CHUNK_HEADER:  # block trailer padding
            position += BLOCK_SIZE - position % BLOCK_SIZE
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        position += CHUNK_HEADER
        pending += data[position : position + length]
        position += length
        if kind in (FULL, LAST) and pending:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def offline_run(run_dir: Path) -> dict[str, Any]:
    """Config, history rows by step, summary and group of the offline run in ``run_dir``."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return read_run(path)


def offline_runs(run_dir: Path) -> list[dict[str, Any]]:
    """Every offline run file in ``run_dir`` (a resumed run writes one per attempt), in order."""
    return [read_run(path) for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def read_run(path: Path) -> dict[str, Any]:
    """Config, history rows by step, summary, group and run id of one offline run file."""
    run_id = ""
    config: dict[str, Any] = {}
    history: dict[int, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    group = ""
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group = record.run.run_group
            run_id = record.run.run_id
            for item in record.run.config.update:
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            history[int(row["_step"])] = row
        elif kind == "summary":
            for item in record.summary.update:
                summary[_key(item)] = json.loads(item.value_json)
    return {
        "config": config,
        "history": history,
        "summary": summary,
        "group": group,
        "run_id": run_id,
    }
