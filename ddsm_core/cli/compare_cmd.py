"""``ddsm compare``: the Pareto fronts of several searches, a hypervolume each, one plot (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def compare(
    results: list[Path] = typer.Argument(..., help="results.json files (or search folders holding one)."),
    out: Path | None = typer.Option(None, "--out", help="Plot the fronts together (PNG)."),
    names: list[str] | None = typer.Option(
        None, "--name", help="Label of each search, in order (default: its folder's name)."
    ),
    ref: str | None = typer.Option(
        None,
        "--ref",
        help="Reference point 'COST,FID' in the axis' unit (default: 1.1 x the max over all fronts).",
    ),
    axis: str | None = typer.Option(
        None,
        "--axis",
        help="Cost axis: gflops (GFLOPs/image) or latency (predicted ms/image; every search needs a latency "
        "table, the same device's). Default: the searches' own objective; GFLOPs when they differ.",
    ),
    as_json: Path | None = typer.Option(None, "--json", help="Also write the table as JSON here."),
) -> None:
    """Hypervolume of each search's front against one shared reference point, as a table."""
    from ddsm_core.cli.checks import check_suffix, write_text_atomic
    from ddsm_core.compare import (
        AXES,
        compare_fronts,
        format_table,
        fronts_on_one_axis,
        read_results,
        unique_names,
    )
    from ddsm_core.errors import ConfigError, choices_message

    check_suffix(out, "--out", ".png", "a PNG plot")
    if names and len(names) != len(results):
        raise ConfigError(f"{len(names)} --name for {len(results)} results: give one per result or none")
    if axis is not None and axis not in AXES:
        raise ConfigError(f"--axis: {choices_message('axis', axis, AXES)}")
    read = [read_results(p, names[k] if names else None) for k, p in enumerate(results)]
    fronts, note = fronts_on_one_axis(read, axis)
    fronts = unique_names(fronts)
    comparison = compare_fronts(fronts, _parse_ref(ref), note=note)
    typer.echo(format_table(comparison))
    if as_json is not None:
        write_text_atomic(as_json, json.dumps(comparison.to_dict(), indent=1) + "\n")
        typer.echo(f"wrote {as_json}")
    if out is not None:
        from ddsm_core.plots import plot_fronts

        extractor = next((f.extractor for f in fronts if f.extractor), None)
        plot_fronts(
            fronts, out, reference=comparison.reference,
            hypervolumes={r.name: r.hypervolume for r in comparison.rows},
            fid_label=f"FID ({extractor})" if extractor else "FID", cost_label=comparison.unit,
        )  # fmt: skip
        typer.echo(f"wrote {out}")


def _parse_ref(text: str | None) -> tuple[float, float] | None:
    from ddsm_core.compare import parse_reference
    from ddsm_core.errors import ConfigError

    try:
        return parse_reference(text)
    except ConfigError as exc:
        raise ConfigError(f"--ref: {exc}") from None


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
