"""One exception hierarchy for user-facing errors.

Anything raised as a ``DDSMError`` is a user mistake or an environment problem with a message that
says what to do; the CLI prints it as one line, the API turns it into a 4xx.
"""

from __future__ import annotations


class DDSMError(Exception):
    """Base class of every error ddsm reports to a user."""


class ConfigError(DDSMError, ValueError):
    """An invalid configuration value (preset, sampler, width, strategy, ...)."""


class StrategyError(ConfigError):
    """A strategy that does not fit its sampler, width set or step count."""


class CheckpointError(DDSMError):
    """A checkpoint that is missing, corrupt or incompatible."""


class StatsError(DDSMError):
    """Reference statistics that are missing or do not match the feature extractor."""


class DatasetError(DDSMError):
    """A dataset that cannot be found or read."""


def choices_message(kind: str, value: object, allowed: object) -> str:
    """A uniform 'unknown X' message that lists the allowed values."""
    allowed_list = ", ".join(str(a) for a in allowed)  # type: ignore[union-attr]
    return f"unknown {kind} {value!r}; allowed: {allowed_list}"
