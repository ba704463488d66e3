"""A device's own state on its own disk, so that a resumed run continues where the device was.

What a device keeps between rounds lives in Flower's ``context.state``: its DP ledger (the
noise and sampling rates it has spent, :mod:`clients.privacy.ledger`) and a partial update it
could not send. Flower keeps that state in memory for the length of one Flower run, and a
resumed run is a new Flower run: without a copy on disk every device's epsilon would restart
from zero. :class:`DeviceStateStore` keeps that copy.

The store keeps one snapshot per round in which the device trained, named by the round, and
reads back the newest snapshot of a round **before** the one it is asked to train in. A server
checkpoint after round ``r`` (:mod:`fl_iot.checkpoint`) may be followed by a crash inside round
``r + 1``, after some devices saved their state for ``r + 1``; when the resumed run replays
round ``r + 1``, those devices then start again from the state they had after their last round
up to ``r``, exactly as in a run that was never interrupted, and the abandoned snapshot is
deleted. Only the newest two snapshots are kept: at most one of them can belong to a round the
server has not checkpointed.

Snapshots are Flower's own protobuf encoding of the ``RecordDict``, written to a temporary file
and renamed into place, so a kill at any point leaves either the old or the new snapshot.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

from fl_iot import protocol as P

_SNAPSHOT = re.compile(r"round-(\d+)\.state")
KEEP_SNAPSHOTS = 2


class DeviceStateStore:
    """Round-stamped snapshots of devices' ``context.state`` under one directory.

    Parameters
    ----------
    root : Path
        The directory; each device gets a subdirectory ``device-<id>``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def load(self, device_id: int, server_round: int) -> RecordDict | None:
        """The device's state before ``server_round``, or ``None`` if it never saved one.

        Snapshots of ``server_round`` and later belong to an attempt the server abandoned (it
        crashed before its checkpoint of that round): they are deleted.
        """
        newest: tuple[int, Path] | None = None
        for stamp, path in self._snapshots(device_id):
            if stamp >= server_round:
                path.unlink(missing_ok=True)
            elif newest is None or stamp > newest[0]:
                newest = (stamp, path)
        if newest is None:
            return None
        proto = RecordDictProto()
        proto.ParseFromString(newest[1].read_bytes())
        return recorddict_from_proto(proto)

    def save(self, device_id: int, server_round: int, state: RecordDict) -> None:
        """Keep ``state`` as the device's state after ``server_round`` (atomically).

        An empty state of a device that never kept one is not written: reading it back gives
        the same empty state, and a fleet of stateless devices writes no file a round.
        """
        directory = self._directory(device_id)
        if not state and not directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True)
        data = recorddict_to_proto(state).SerializeToString()
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".round-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, directory / f"round-{server_round}.state")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        snapshots = sorted(self._snapshots(device_id), reverse=True)
        for _, path in snapshots[KEEP_SNAPSHOTS:]:
            path.unlink(missing_ok=True)

    def _directory(self, device_id: int) -> Path:
        return self.root / f"device-{int(device_id)}"

    def _snapshots(self, device_id: int) -> list[tuple[int, Path]]:
        directory = self._directory(device_id)
        if not directory.is_dir():
            return []
        return [
            (int(match.group(1)), path)
            for path in directory.iterdir()
            if (match := _SNAPSHOT.fullmatch(path.name))
        ]


def server_round_of(msg: Message) -> int:
    """The server round a message names in its config (0 without one)."""
    config = msg.content.get(P.CONFIG) if msg.has_content() else None
    value = config.get(P.SERVER_ROUND, 0) if isinstance(config, ConfigRecord) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def persisted_state_mod(store: DeviceStateStore, device_of: Callable[[Context], int]) -> Mod:
    """A client mod that keeps ``context.state`` in ``store`` around every train message.

    Outermost, so that what the handler and the inner mods (a codec's residual) leave in the
    state is saved. The state is read back before every round, not only after a restart: the
    store is where the device's state lives, memory only a copy.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        device, server_round = device_of(context), server_round_of(msg)
        restore_state(context.state, store.load(device, server_round))
        try:
            return call_next(msg, context)
        finally:
            store.save(device, server_round, context.state)

    return mod


def restore_state(state: RecordDict, saved: RecordDict | None) -> None:
    """Make ``state`` (a node's ``context.state``) hold exactly ``saved`` (empty for ``None``)."""
    for key in list(state.keys()):
        del state[key]
    if saved is not None:
        for key, record in saved.items():
            state[key] = record
