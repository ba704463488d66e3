"""Where datasets are looked for.

A loader gets a data root from the scenario config (``scenario.dataset.root``) or, when that is
unset, from the ``FL_IOT_DATA_ROOT`` environment variable. Each dataset lives in its own
sub-directory of the root (``<root>/mitbih``, ``<root>/cmapss``, ...); a root that points straight
at the dataset directory works too.

Files that ship with fl-iot (the compact MIT-BIH subset) live in ``fl_iot/assets``. Flower's app
bundle (FAB) carries only text files, so when a ``flwr run`` unpacks the app without its assets the
installed ``fl-iot`` distribution is searched as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from fl_iot.errors import DatasetNotFoundError

DATA_ROOT_ENV = "FL_IOT_DATA_ROOT"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def find_dataset_dir(
    dataset: str,
    subdir: str,
    root: str | Path | None,
    required: Iterable[str],
    how_to_get: str,
) -> Path:
    """Return the directory that holds all of ``required`` for ``dataset``.

    Parameters
    ----------
    dataset : str
        Dataset name, for the error message.
    subdir : str
        The dataset's directory name under a data root.
    root : str or Path or None
        Data root from the config; ``None`` falls back to ``$FL_IOT_DATA_ROOT``.
    required : iterable of str
        File names that must all exist in the directory.
    how_to_get : str
        One sentence telling the user how to obtain the data.

    Raises
    ------
    DatasetNotFoundError
        Listing every place that was searched.
    """
    required = list(required)
    roots: list[Path] = []
    if root not in (None, ""):
        roots.append(Path(str(root)).expanduser())
    elif os.environ.get(DATA_ROOT_ENV):
        roots.append(Path(os.environ[DATA_ROOT_ENV]).expanduser())
    candidates = [c for r in roots for c in (r / subdir, r)]
    for candidate in candidates:
        if all((candidate / name).exists() for name in required):
            return candidate
    looked_in = [str(c) for c in candidates] or [
        f"(no data root: set scenario.dataset.root=<dir> or ${DATA_ROOT_ENV})"
    ]
    raise DatasetNotFoundError(
        dataset, looked_in, f"Expected files: {', '.join(required)}. {how_to_get}"
    )


def find_bundled_asset(name: str) -> Path:
    """Return the path of an asset that ships with fl-iot.

    Raises
    ------
    DatasetNotFoundError
        If neither the package nor the installed distribution holds the asset.
    """
    candidates = [ASSETS_DIR / name, *_installed_asset_candidates(name)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        name,
        [str(c) for c in candidates],
        "Reinstall fl-iot (`pip install -e .` from a checkout) or rebuild the asset with "
        "`python scripts/build_mitbih_subset.py`.",
    )


def _installed_asset_candidates(name: str) -> list[Path]:
    """Asset paths inside the installed distribution, editable installs included."""
    try:
        dist = metadata.distribution("fl-iot")
    except metadata.PackageNotFoundError:
        return []
    found = [Path(str(dist.locate_file(f"fl_iot/assets/{name}")))]
    direct_url = dist.read_text("direct_url.json")
    if direct_url:
        url = json.loads(direct_url).get("url", "")
        if url.startswith("file://"):
            found.append(Path(url.removeprefix("file://")) / "fl_iot" / "assets" / name)
    return found
