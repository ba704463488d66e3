"""The ``fl-iot-export`` command: write each device's own data, and the server's share, of a run.

On real devices each SuperNode holds only its device's data. This command composes the same
config as a run (Hydra overrides, as for ``fl-iot``), loads and partitions the dataset once, and
writes the exports of :mod:`fl_iot.data.export`::

    fl-iot-export scenario=smart_home seed=1 scenario.num_devices=4 --out /data/export
    fl-iot-export scenario=smart_home --out /data/export --devices 0 2

    /data/export/device-0/   device 0's local train and test split (copy it to its node)
    /data/export/server/     the central test split and every device's sizes (for the SuperLink)

A SuperNode then reads its export with ``--node-config "device-id=3
data-path=/data/export/device-3"``, and the ServerApp its share with the run-config
``server-data="/data/export/server"``; both refuse an export of another run's partition. Bad
input (an override, an unknown device id, an unwritable ``--out``) prints one message and exits
with :data:`~fl_iot.errors.EXIT_CODE_USER_ERROR`, without a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fl_iot.errors import ConfigError


def export_run(overrides: Sequence[str], out: Path, devices: Sequence[int] | None) -> list[Path]:
    """Export ``devices`` (default: all) and the server's share of the run ``overrides`` give.

    Returns the directories written: one per device (``device-<n>``), then ``server``.

    Raises
    ------
    FlIotError
        For a config the run would refuse, a missing dataset, an unknown device id or an
        unwritable ``out``.
    hydra.errors.CompactHydraException
        For an override Hydra cannot apply.
    """
    from omegaconf import DictConfig, OmegaConf

    from fl_iot.cli import check_output_dir
    from fl_iot.data.export import (
        SERVER_DIR,
        device_dir_name,
        write_device_partition,
        write_server_share,
    )
    from fl_iot.device_runtime import partition_spec, run_context
    from fl_iot.run_config import compose_config

    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(tuple(overrides)), resolve=True))
    assert isinstance(cfg, DictConfig)
    check_output_dir(out, "--out")
    run = run_context(cfg)
    num_devices = len(run.federation)
    chosen = sorted(set(devices)) if devices is not None else list(range(num_devices))
    unknown = [d for d in chosen if not 0 <= d < num_devices]
    if unknown:
        raise ConfigError(
            f"--devices {' '.join(map(str, unknown))}: no such device; this run has "
            f"{num_devices} devices (0..{num_devices - 1})"
        )
    spec = partition_spec(run.cfg)
    written = []
    for device in chosen:
        directory = out / device_dir_name(device)
        write_device_partition(directory, run.data, device, spec)
        written.append(directory)
    write_server_share(out / SERVER_DIR, run.data, spec)
    return [*written, out / SERVER_DIR]


def _device_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device id (a whole number); Hydra overrides go before --devices"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a device id (they start at 0)")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: exit 0, or 2 with one message for bad input."""
    parser = argparse.ArgumentParser(
        prog="fl-iot-export",
        description="Write each device's own data, and the server's share, of the run that the "
        "Hydra overrides describe (as for fl-iot).",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides, e.g. scenario=smart_home"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory to write device-<n>/ and server/ to"
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        type=_device_id,
        metavar="ID",
        help="the devices to export (default: every device of the run)",
    )
    args = parser.parse_intermixed_args(argv)

    from fl_iot.cli import user_errors_exit

    with user_errors_exit(parser.prog):
        written = export_run(args.overrides, args.out, args.devices)
    for directory in written:
        print(directory)


if __name__ == "__main__":
    main()
