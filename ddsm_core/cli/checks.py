"""The input checks of every command: they live in :mod:`ddsm_core.checks` (the demo in ``api`` uses
them too, and ``api`` may not import ``ddsm_core.cli``); atomic writes in :mod:`ddsm_core.atomic`."""

from ddsm_core.atomic import write_text_atomic
from ddsm_core.checks import (
    check_checkpoint,
    check_file,
    check_min,
    check_steps,
    check_suffix,
    check_writable_parent,
    new_output,
)

__all__ = [
    "check_checkpoint",
    "check_file",
    "check_min",
    "check_steps",
    "check_suffix",
    "check_writable_parent",
    "new_output",
    "write_text_atomic",
]
