"""The ``ddsm`` command line (core commands).

Command modules register themselves here; each imports torch inside its command bodies only, so that
``api`` can build on this app without importing torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import typer

from ddsm_core.errors import DDSMError

app = typer.Typer(
    name="ddsm",
    help="Step-aware diffusion models: slimmable supernet, per-step width search, and its service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: rich mode prints "<bool>" after every flag and eats "[...]" in help texts
    rich_markup_mode=None,
)

# Modules that define ``register(app)``; a module not written yet is skipped.
_COMMAND_MODULES = (
    "ddsm_core.cli.flops_cmd",
    "ddsm_core.cli.train_cmd",
    "ddsm_core.cli.sample_cmd",
    "ddsm_core.cli.search_cmd",
    "ddsm_core.cli.strategy_cmd",
    "ddsm_core.cli.compare_cmd",
    "ddsm_core.cli.latency_cmd",
)


def register_all(target: typer.Typer, modules: tuple[str, ...] = _COMMAND_MODULES) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(target)


@app.callback()
def _root() -> None:
    """Keeps ``ddsm CMD`` a group even while a single command is registered."""


register_all(app)


def run_app(typer_app: typer.Typer | Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run a typer app; a DDSMError becomes a one-line message and exit status 2.

    Click's standalone mode already turns usage errors and Ctrl-C into a message and an exit status.
    """
    try:
        typer_app(args=argv, prog_name="ddsm")  # type: ignore[call-arg]
    except DDSMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def main() -> None:
    from ddsm_core.threads import passive_openmp

    passive_openmp()  # before any command imports torch
    sys.exit(run_app(app))
