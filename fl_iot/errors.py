"""User-facing errors.

Every error a user can cause by configuration or input derives from :class:`FlIotError`. The CLI
prints its message, without a traceback, and exits with :data:`EXIT_CODE_USER_ERROR`.
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_CODE_USER_ERROR = 2


class FlIotError(Exception):
    """An error caused by the user's configuration, input or environment."""


class ConfigError(FlIotError, ValueError):
    """A configuration value is invalid; the message names the value and the valid choices."""


class UnknownNameError(ConfigError, KeyError):
    """A plugin name (dataset, trainer, attack, ...) is not registered."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}; valid choices: {', '.join(self.valid) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DatasetNotFoundError(FlIotError, FileNotFoundError):
    """A dataset's files are not where the loader looked."""

    def __init__(self, dataset: str, looked_in: Iterable[str], how_to_get: str) -> None:
        places = "\n".join(f"  - {place}" for place in looked_in)
        super().__init__(f"dataset {dataset!r} not found. Looked in:\n{places}\n{how_to_get}")
