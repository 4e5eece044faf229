"""A finished search's report folder from its results.json (``GET /searches/{id}/report``).

The results come from ``ddsm_core.results.build_results`` (the controller stores them when the search
ends), and the folder is written as ``ddsm search`` writes its own: results.json, report.md,
pareto.png, strategy.png and one strategy file per finalist (pick.json, knee.json, full.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_search_report(out: Path, results: dict[str, Any]) -> Path:
    """The report folder into ``out`` (samples.png is the caller's); returns report.md's path."""
    from ddsm_core.report import write_report_folder

    return write_report_folder(out, results)
