"""Availability traces: a CSV of online sessions, to replay real availability or write our own.

The format is one session per line, with a header::

    device,online_from,online_until
    0,0.0,5400.0
    0,28800.0,61200.0

``device`` is the device id, the times are simulated seconds from the start of the run
(``online_until`` may be ``inf``). Sessions of one device may come in any order and may touch or
overlap (they are merged). A device without a line is offline for the whole run.

``python -m fl_iot.fleet --scenario <name> --days 3 --out trace.csv`` writes the sessions that the
scenario's ``fleet=realistic`` profile generates, labelled synthetic in its first line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from fl_iot.errors import ConfigError

HEADER = ("device", "online_from", "online_until")
SYNTHETIC_MARK = "# synthetic"


def read_trace(path: str | Path) -> dict[int, list[tuple[float, float]]]:
    """The sessions of a trace file by device id.

    Raises
    ------
    ConfigError
        If the file is missing, has another header, or a line is not ``int,float,float`` with
        ``0 <= online_from < online_until``; the message names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"fleet.trace={str(path)!r} cannot be read: {error.strerror}") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = list(csv.reader(lines))
    if not rows or tuple(c.strip() for c in rows[0]) != HEADER:
        raise ConfigError(
            f"fleet.trace={str(path)!r}: the first line must be the header {','.join(HEADER)}"
        )
    sessions: dict[int, list[tuple[float, float]]] = {}
    for number, row in enumerate(rows[1:], start=2):
        try:
            device, start, end = int(row[0]), float(row[1]), float(row[2])
            if len(row) != 3 or device < 0 or math.isnan(start) or math.isnan(end):
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(
                f"fleet.trace={str(path)!r}, row {number}: expected device,online_from,"
                f"online_until (an id >= 0 and two times), got {','.join(row)!r}"
            ) from None
        if not 0 <= start < end:
            raise ConfigError(
                f"fleet.trace={str(path)!r}, row {number}: need 0 <= online_from < "
                f"online_until, got {start}, {end}"
            )
        sessions.setdefault(device, []).append((start, end))
    return sessions


def write_trace(
    path: str | Path, sessions: Mapping[int, list[tuple[float, float]]], note: str = ""
) -> None:
    """Write ``sessions`` in the trace format; ``note`` becomes a ``#`` comment line on top."""
    with Path(path).open("w", newline="") as file:
        if note:
            file.write(f"# {note}\n")
        writer = csv.writer(file)
        writer.writerow(HEADER)
        for device in sorted(sessions):
            for start, end in sorted(sessions[device]):
                writer.writerow(
                    [device, f"{start:.1f}", "inf" if math.isinf(end) else f"{end:.1f}"]
                )
