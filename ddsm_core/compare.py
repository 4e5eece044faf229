"""Compare searches: the Pareto fronts of several searches and a hypervolume each (torch-free).

A front is a list of ``(GFLOPs per image, FID)`` points, both minimised. The hypervolume of a front is
the area of the objective plane it dominates, bounded by a reference point; a larger one is a better
front. Comparing searches needs ONE reference point for all of them, otherwise each is measured in its
own box. The default (:func:`reference_point`) is 1.1 x the largest value of each objective over all
fronts' points: every point of every front then adds area, the worst one a thin margin, and the rule
needs no knowledge of the model (both objectives are non-negative). A fixed reference point (for
comparisons over time, e.g. the full-width cost and a FID bound) can be given instead; points outside
its box add nothing.

The hypervolume is exact: a sweep over the points sorted by cost (a test checks it against pymoo's
``HV`` indicator). The normalized hypervolume divides it by the box between the ideal point (the best
value of each objective over all fronts) and the reference point, so it lies in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddsm_core.errors import ConfigError

Point = tuple[float, float]
"""``(GFLOPs per image, FID)``."""

REFERENCE_MARGIN = 1.1


@dataclass(frozen=True)
class Front:
    """The Pareto front of one search.

    :param name: a label (table row, legend).
    :param points: ``(GFLOPs per image, FID)`` pairs; order and dominated points do not matter.
    :param extractor: the feature extractor the FIDs were measured with, when known.
    """

    name: str
    points: tuple[Point, ...]
    extractor: str | None = None

    def __post_init__(self) -> None:
        pts = []
        for p in self.points:
            if len(p) != 2 or not all(_finite_number(v) for v in p):
                raise ConfigError(f"front {self.name!r}: a point must be two finite numbers, got {p!r}")
            pts.append((float(p[0]), float(p[1])))
        object.__setattr__(self, "points", tuple(sorted(pts)))


@dataclass(frozen=True)
class FrontSummary:
    """One row of a comparison."""

    name: str
    n_points: int
    hypervolume: float
    normalized: float
    min_gflops: float
    min_fid: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "n_points": self.n_points, "hypervolume": self.hypervolume,
            "normalized": self.normalized, "min_gflops": self.min_gflops, "min_fid": self.min_fid,
        }  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Hypervolumes of several fronts against one reference point."""

    reference: Point
    ideal: Point
    rows: tuple[FrontSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": {"gflops": self.reference[0], "fid": self.reference[1]},
            "ideal": {"gflops": self.ideal[0], "fid": self.ideal[1]},
            "searches": [r.to_dict() for r in self.rows],
        }


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def hypervolume_2d(points: Iterable[Point], reference: Point) -> float:
    """Area dominated by ``points`` (both objectives minimised) inside the box below ``reference``.

    Sweep: sort by the first objective; each point that improves the best second objective so far adds
    the rectangle from it to the next such point (or the reference) times its gap to the reference.
    """
    rx, ry = reference
    inside = sorted((x, y) for x, y in points if x < rx and y < ry)
    area, best_y = 0.0, ry
    nondominated = []
    for x, y in inside:
        if y < best_y:
            nondominated.append((x, y))
            best_y = y
    for k, (x, y) in enumerate(nondominated):
        next_x = nondominated[k + 1][0] if k + 1 < len(nondominated) else rx
        area += (next_x - x) * (ry - y)
    return area


def reference_point(fronts: Sequence[Front], margin: float = REFERENCE_MARGIN) -> Point:
    """The shared reference point: ``margin`` x the largest value of each objective over all points.

    :raises ConfigError: when no front has a point, or a value is negative (the rule assumes
        non-negative objectives: give a reference point instead).
    """
    pts = [p for f in fronts for p in f.points]
    if not pts:
        raise ConfigError("no front has a point: nothing to compare")
    if any(v < 0 for p in pts for v in p):
        raise ConfigError("negative objective values: give the reference point explicitly")
    return (margin * max(p[0] for p in pts), margin * max(p[1] for p in pts))


def compare_fronts(fronts: Sequence[Front], reference: Point | None = None) -> Comparison:
    """Hypervolume of each front against one shared reference point (default :func:`reference_point`).

    :raises ConfigError: for no fronts, an empty front, or fronts whose FIDs come from different
        feature extractors (their FIDs are not on one scale).
    """
    if not fronts:
        raise ConfigError("compare needs at least one front")
    empty = [f.name for f in fronts if not f.points]
    if empty:
        raise ConfigError(f"front {empty[0]!r} has no point (did the search finish?)")
    extractors = {f.extractor for f in fronts if f.extractor}
    if len(extractors) > 1:
        named = ", ".join(f"{f.name}: {f.extractor}" for f in fronts)
        raise ConfigError(f"FIDs from different feature extractors are not comparable ({named})")
    if reference is None:
        reference = reference_point(fronts)
    elif len(reference) != 2 or not all(_finite_number(v) for v in reference):
        raise ConfigError(f"the reference point must be two finite numbers (GFLOPs, FID), got {reference!r}")
    ref = (float(reference[0]), float(reference[1]))
    ideal = (min(p[0] for f in fronts for p in f.points), min(p[1] for f in fronts for p in f.points))
    box = (ref[0] - ideal[0]) * (ref[1] - ideal[1])
    rows = []
    for f in fronts:
        hv = hypervolume_2d(f.points, ref)
        rows.append(
            FrontSummary(
                name=f.name,
                n_points=len(f.points),
                hypervolume=hv,
                normalized=hv / box if box > 0 else 0.0,
                min_gflops=min(p[0] for p in f.points),
                min_fid=min(p[1] for p in f.points),
            )  # fmt: skip
        )
    return Comparison(reference=ref, ideal=ideal, rows=tuple(rows))


# ---------------------------------------------------------------------------------------- reading
def front_from_results(results: Mapping[str, Any], name: str, *, source: str = "results") -> Front:
    """The front of a search's results (``ddsm search``'s results.json or the service's report).

    Reads the ``front`` list (at the top level or under ``results``/``result``); each entry is a dict
    with ``gflops`` and ``fid`` (or ``record``/``metrics`` holding them), or ``objectives`` in the search
    driver's order ``[FID, GFLOPs]``. Failed entries (no objectives, a non-finite value) are skipped.

    :raises ConfigError: naming ``source`` when there is no front or an entry cannot be read.
    """
    data: Any = results
    if isinstance(data, Mapping) and "front" not in data:
        for key in ("results", "result"):
            if isinstance(data.get(key), Mapping) and "front" in data[key]:
                data = data[key]
                break
    if not isinstance(data, Mapping) or not isinstance(data.get("front"), list):
        raise ConfigError(f"{source} has no 'front' list: is it a search's results.json?")
    points = []
    for k, entry in enumerate(data["front"]):
        point = _entry_point(entry)
        if point is _BAD:
            raise ConfigError(f"{source}: front entry {k} has neither 'gflops'/'fid' nor 'objectives'")
        if point is not None:
            points.append(point)
    extractor = data.get("extractor")
    return Front(name, tuple(points), extractor if isinstance(extractor, str) else None)


_BAD: Any = object()


def _entry_point(entry: Any) -> Point | None:
    """``(gflops, fid)`` of a front entry, None when failed, ``_BAD`` when unreadable."""
    if not isinstance(entry, Mapping):
        return _BAD
    if entry.get("status") == "failed":
        return None
    for d in (entry, entry.get("record"), entry.get("metrics")):
        if isinstance(d, Mapping) and "gflops" in d and "fid" in d:
            g, f = d["gflops"], d["fid"]
            return (float(g), float(f)) if _finite_number(g) and _finite_number(f) else None
    if "objectives" in entry:
        obj = entry["objectives"]
        if obj is None:
            return None
        if isinstance(obj, Sequence) and len(obj) == 2:
            f, g = obj  # the search driver's order: (FID, GFLOPs)
            return (float(g), float(f)) if _finite_number(g) and _finite_number(f) else None
    return _BAD


def load_front(path: str | os.PathLike[str], name: str | None = None) -> Front:
    """The front in a results.json file (or a search folder holding one).

    :param name: the label; default the search folder's name (the file's parent folder).
    :raises ConfigError: for a missing or unreadable file, invalid JSON, or no front.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ConfigError(f"{p} does not exist (give a search's results.json or its folder)")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from exc
    label = name if name is not None else (p.parent.name if p.name == "results.json" else p.stem) or str(p)
    return front_from_results(data, label, source=str(p))


def unique_names(fronts: Sequence[Front]) -> list[Front]:
    """The fronts with repeated names made unique (``a``, ``a#2``, ...), for tables and legends."""
    seen: dict[str, int] = {}
    out = []
    for f in fronts:
        seen[f.name] = seen.get(f.name, 0) + 1
        out.append(f if seen[f.name] == 1 else Front(f"{f.name}#{seen[f.name]}", f.points, f.extractor))
    return out


def parse_reference(text: str | None) -> Point | None:
    """A reference point written ``'GFLOPS,FID'`` (``ddsm compare --ref``, the REST ``ref``); None stays None.

    :raises ConfigError: for anything but two finite numbers.
    """
    if text is None:
        return None
    try:
        g, f = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"the reference point is 'GFLOPS,FID', e.g. '12.5,40', got {text[:80]!r}") from None
    if not (math.isfinite(g) and math.isfinite(f)):
        raise ConfigError(f"the reference point must be two finite numbers, got {text[:80]!r}")
    return (g, f)


def format_table(comparison: Comparison) -> str:
    """A plain-text table of a comparison, one search per row."""
    rows = comparison.rows
    w = max([len("search")] + [len(r.name) for r in rows])
    ref, ideal = comparison.reference, comparison.ideal
    lines = [
        f"reference point: {ref[0]:.4f} GFLOPs, FID {ref[1]:.4f}   ideal: {ideal[0]:.4f} GFLOPs, "
        f"FID {ideal[1]:.4f}",
        f"{'search':<{w}} {'points':>6} {'hypervolume':>12} {'normalized':>10} {'min GFLOPs':>10} "
        f"{'min FID':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<{w}} {r.n_points:>6} {r.hypervolume:>12.4f} {r.normalized:>10.4f} "
            f"{r.min_gflops:>10.4f} {r.min_fid:>9.4f}"
        )
    lines.append("hypervolume: area dominated below the shared reference point (GFLOPs x FID, larger is")
    lines.append("better); normalized: its share of the box between the ideal and the reference point.")
    return "\n".join(lines)
