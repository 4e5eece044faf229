"""``ddsm strategy ...``: work with strategy files; ``ddsm strategy transfer`` maps one to another sampler.

Torch-free: a transfer needs only the noise schedule (from a checkpoint's manifest or by name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ddsm_core.spec import SAMPLER_HELP

strategy_app = typer.Typer(
    name="strategy",
    help="Work with step-aware strategy files.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def transfer(
    strategy: Path = typer.Option(
        ..., "--strategy", help="Strategy JSON file to transfer (or a search's results.json: its pick)."
    ),
    sampler: str = typer.Option(..., "--sampler", help=f"Target sampler: {SAMPLER_HELP}."),
    steps: int = typer.Option(..., "--steps", help="Target number of sampler steps."),
    out: Path = typer.Option(..., "--out", help="Strategy JSON file to write."),
    plot: Path | None = typer.Option(None, "--plot", help="Also plot both strategies against log-SNR (PNG)."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Take the noise schedule (and check the width set) from this checkpoint."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", help="Noise schedule without --checkpoint: linear (default) or cosine."
    ),
    timesteps: int = typer.Option(1000, "--timesteps", help="The schedule's T (with --schedule)."),
) -> None:
    """Map a strategy to another sampler and step count by noise level (log-SNR).

    Each target step runs at the width that covers most of its stretch of log-SNR in the source
    strategy; the same sampler and steps give the same strategy back.
    """
    from ddsm_core.cli.checks import (
        check_file,
        check_steps,
        check_suffix,
        check_writable_parent,
        write_text_atomic,
    )
    from ddsm_core.errors import ConfigError
    from ddsm_core.transfer import read_strategies, transfer_strategy

    check_suffix(plot, "--plot", ".png", "a PNG plot")
    check_file(strategy, "--strategy", "strategy file")
    check_steps("--steps", steps)
    check_writable_parent(out, "--out")
    if plot is not None:
        check_writable_parent(plot, "--plot")
    label, source = read_strategies(strategy)[0]  # a results.json: its pick
    if checkpoint is not None and schedule is not None:
        raise ConfigError("give --checkpoint or --schedule, not both (the checkpoint has its schedule)")
    sched = _schedule(checkpoint, source, schedule or "linear", timesteps)
    target = transfer_strategy(source, sampler, steps, sched)
    write_text_atomic(out, target.file_text())
    what = "" if label == strategy.stem else f" ({label} of {strategy})"
    typer.echo(f"{source.describe()}{what}  ->  {target.describe()}  -> {out}")
    if plot is not None:
        from ddsm_core.plots import plot_strategy

        plot_strategy(
            {f"source {source.sampler}/{source.steps}": source,
             f"transferred {target.sampler}/{target.steps}": target},
            plot, x="log_snr", schedule=sched, title="strategy transfer: width against noise level",
        )  # fmt: skip
        typer.echo(f"wrote {plot}")


def _schedule(checkpoint: Path | None, source: Any, kind: str, timesteps: int) -> dict[str, Any]:
    """The noise schedule's parameters, from a checkpoint manifest or by name; checks the width set."""
    from ddsm_core.transfer import check_widths, named_schedule

    if checkpoint is None:
        return named_schedule(kind, timesteps)
    from ddsm_core.checkpoint import read_manifest
    from ddsm_core.checks import check_checkpoint

    manifest = read_manifest(check_checkpoint(checkpoint), verify=False)
    check_widths(source, tuple(manifest["model_config"].get("widths", ())))
    return dict(manifest["schedule"])


def register(app: typer.Typer) -> None:
    strategy_app.command("transfer")(transfer)
    app.add_typer(strategy_app, name="strategy")
