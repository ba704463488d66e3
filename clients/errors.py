"""The errors a plugin raises for a bad configuration value or an unknown name.

:class:`FlIotError` is the base of every error a user causes; the ``fl-iot`` command prints its
message without a traceback and exits with 2 (:mod:`fl_iot.errors` has the exit codes). They live
here, below ``fl_iot``, so that trainers, attacks and their third-party plugins raise them
without importing the application.
"""

from __future__ import annotations

from collections.abc import Iterable


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
