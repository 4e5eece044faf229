"""``ddsm flops``: parameters and GFLOPs per width of a preset supernet."""

from __future__ import annotations

import json

import typer


def flops(
    preset: str = typer.Option("cifar10", "--preset", help="Model preset: cifar10, celeba64 or digits."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """GFLOPs (2 x multiply-adds) of one network call per width, counted from the model."""
    from ddsm_core.config import UNetConfig  # torch-free, but kept with the torch import below
    from ddsm_core.flops import flops_report

    config = UNetConfig.from_preset(preset)  # ConfigError listing the presets; the CLI prints it
    report = flops_report(config, preset)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(_table(report))


def _table(report: dict) -> str:
    from ddsm_core.widths import format_width

    full = report["gflops_conv_linear"][-1]
    lines = [
        f"preset {report['preset']}: {report['params'] / 1e6:.2f} M parameters",
        f"{'width':>6} {'GFLOPs':>10} {'conv/linear':>12} {'ratio':>7}",
    ]
    for w, g, cl in zip(report["widths"], report["gflops"], report["gflops_conv_linear"], strict=True):
        lines.append(f"{format_width(w):>6} {g:>10.4f} {cl:>12.4f} {cl / full:>7.3f}")
    lines.append("GFLOPs = 2 x multiply-adds per image; conv/linear leaves out the attention products")
    lines.append("(the paper's count); ratio = conv/linear relative to full width.")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("flops")(flops)
