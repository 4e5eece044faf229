"""Compare searches: the Pareto fronts of several searches and a hypervolume each (torch-free).

A front is a list of ``(cost, FID)`` points, both minimised. The cost is on one axis for every front of a
comparison: ``gflops`` (GFLOPs per image, which every evaluation records) or ``latency`` (a latency
table's predicted milliseconds per image, which searches with a table record). By default a
comparison is on the searches' own objective when they share it, and on GFLOPs when they do not
(:func:`choose_axis`; the comparison's ``note`` says so); asking for the latency axis when a search has
no predicted latency, or predictions of different devices, is a ConfigError, not a silent mix of units.
The hypervolume of a front is
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

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddsm_core.errors import ConfigError, choices_message
from ddsm_core.spec import COST_UNITS, OBJECTIVES

Point = tuple[float, float]
"""``(cost, FID)``: the cost in the comparison's axis (:data:`AXES`)."""

AXES = OBJECTIVES
"""The cost axes a comparison can use: a search's objectives (GFLOPs/image, predicted ms/image)."""
SHORT_UNITS = {"gflops": "GFLOPs", "latency": "ms"}

REFERENCE_MARGIN = 1.1


@dataclass(frozen=True)
class Front:
    """The Pareto front of one search.

    :param name: a label (table row, legend).
    :param points: ``(cost, FID)`` pairs; order and dominated points do not matter.
    :param extractor: the feature extractor the FIDs were measured with, when known.
    :param axis: the cost's unit (:data:`AXES`): GFLOPs per image or predicted ms per image.
    :param objective: the cost the search itself minimised, when known (it may differ from ``axis``).
    :param latency_source: which latency table predicted the latencies (device, dtype, threads).
    """

    name: str
    points: tuple[Point, ...]
    extractor: str | None = None
    axis: str = "gflops"
    objective: str | None = None
    latency_source: str | None = None

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ConfigError(choices_message("axis", self.axis, AXES))
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
    min_cost: float
    min_fid: float
    objective: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "objective": self.objective, "n_points": self.n_points,
            "hypervolume": self.hypervolume, "normalized": self.normalized, "min_cost": self.min_cost,
            "min_fid": self.min_fid,
        }  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Hypervolumes of several fronts against one reference point, all on one cost ``axis``.

    ``note`` says why the axis is not every search's own objective (searches of different objectives)."""

    reference: Point
    ideal: Point
    rows: tuple[FrontSummary, ...]
    axis: str = "gflops"
    note: str | None = None

    @property
    def unit(self) -> str:
        return COST_UNITS[self.axis]

    def to_dict(self) -> dict[str, Any]:
        """JSON: points are ``{"cost", "fid"}``, the cost in ``unit`` (``axis``)."""
        return {
            "axis": self.axis,
            "unit": self.unit,
            "note": self.note,
            "reference": {"cost": self.reference[0], "fid": self.reference[1]},
            "ideal": {"cost": self.ideal[0], "fid": self.ideal[1]},
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


def compare_fronts(
    fronts: Sequence[Front], reference: Point | None = None, note: str | None = None
) -> Comparison:
    """Hypervolume of each front against one shared reference point (default :func:`reference_point`),
    which is in the fronts' one unit (their ``axis``).

    :param note: why the axis was chosen (:func:`choose_axis`), kept in the comparison.
    :raises ConfigError: for no fronts, an empty front, fronts on different axes, fronts whose FIDs
        come from different feature extractors (their FIDs are not on one scale), or latencies
        predicted by different latency tables (devices).
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
    axes = {f.axis for f in fronts}
    if len(axes) > 1:  # the caller's mistake: one hypervolume box needs one unit
        named = ", ".join(f"{f.name}: {f.axis}" for f in fronts)
        raise ConfigError(f"fronts with costs in different units are not comparable ({named})")
    axis = axes.pop()
    sources = {f.latency_source for f in fronts if f.latency_source}
    if axis == "latency" and len(sources) > 1:
        named = "; ".join(f"{f.name}: {f.latency_source or 'unknown table'}" for f in fronts)
        raise ConfigError(
            f"latencies predicted by different latency tables are not comparable ({named}): "
            "compare on the gflops axis"
        )
    if reference is None:
        reference = reference_point(fronts)
    elif len(reference) != 2 or not all(_finite_number(v) for v in reference):
        raise ConfigError(
            f"the reference point must be two finite numbers ({SHORT_UNITS[axis]}, FID), got {reference!r}"
        )
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
                min_cost=min(p[0] for p in f.points),
                min_fid=min(p[1] for p in f.points),
                objective=f.objective,
            )  # fmt: skip
        )
    return Comparison(reference=ref, ideal=ideal, rows=tuple(rows), axis=axis, note=note)


def choose_axis(
    objectives: Sequence[tuple[str, str]], requested: str | None = None
) -> tuple[str, str | None]:
    """The cost axis of a comparison of searches ``(name, own objective)`` and a note when it is not
    every search's own: ``requested`` if given, else the objective they share, else ``gflops``
    (every evaluation records GFLOPs; predicted latency needs a latency table).

    :raises ConfigError: for an unknown ``requested`` axis.
    """
    if requested is not None:
        if requested not in AXES:
            raise ConfigError(choices_message("axis", requested, AXES))
        return requested, None
    own = {objective for _, objective in objectives}
    if len(own) <= 1:
        return (own.pop() if own else "gflops"), None
    named = ", ".join(f"{name}: {objective}" for name, objective in objectives)
    return "gflops", (
        f"the searches minimise different costs ({named}); compared in {COST_UNITS['gflops']}, which "
        "every search has (the latency axis compares predicted ms/image where every search has them)"
    )


# ---------------------------------------------------------------------------------------- reading
def _results_body(results: Mapping[str, Any]) -> Any:
    """The dict holding ``front``: the top level, or ``results``/``result`` below it."""
    if isinstance(results, Mapping) and "front" not in results:
        for key in ("results", "result"):
            if isinstance(results.get(key), Mapping) and "front" in results[key]:
                return results[key]
    return results


def objective_of(results: Mapping[str, Any]) -> str:
    """The cost a search's results minimised (``config.objective``; results from before objectives
    existed, or without a config, minimised GFLOPs)."""
    for data in (results, _results_body(results)):
        config = data.get("config") if isinstance(data, Mapping) else None
        if isinstance(config, Mapping) and config.get("objective") in AXES:
            return str(config["objective"])
    return "gflops"


def latency_source(table: Mapping[str, Any] | None) -> str | None:
    """Which latency table predicted a search's latencies, as a label: ``device, dtype[, N threads]``
    (``table``: results.json's ``latency_table`` or a latency table's JSON); None when unknown."""
    if not isinstance(table, Mapping) or not table.get("device"):
        return None
    threads = table.get("threads")
    return f"{table['device']}, {table.get('dtype')}" + (f", {threads} threads" if threads else "")


def front_from_results(
    results: Mapping[str, Any],
    name: str,
    *,
    source: str = "results",
    axis: str | None = None,
    objective: str | None = None,
) -> Front:
    """The front of a search's results (``ddsm search``'s results.json or the service's report), its
    costs on ``axis`` (default: the search's own objective, :func:`objective_of`).

    Reads the ``front`` list (at the top level or under ``results``/``result``); each entry is a dict
    with ``fid`` and the cost (``gflops``, or ``predicted_latency_s`` in seconds for the latency axis),
    directly or under ``record``/``metrics``, or ``objectives`` in the search driver's order
    ``[FID, cost]`` (the cost of the search's own ``objective``). Failed entries (no objectives, a
    non-finite value) are skipped.

    :raises ConfigError: naming ``source`` when there is no front, an entry cannot be read, or an
        entry has no cost on ``axis`` (no predicted latency: the search had no latency table).
    """
    own = objective or objective_of(results)
    axis = axis or own
    if axis not in AXES:
        raise ConfigError(choices_message("axis", axis, AXES))
    data = _results_body(results)
    if not isinstance(data, Mapping) or not isinstance(data.get("front"), list):
        raise ConfigError(f"{source} has no 'front' list: is it a search's results.json?")
    points = []
    for k, entry in enumerate(data["front"]):
        point = _entry_point(entry, axis, own)
        if point is _BAD:
            raise ConfigError(f"{source}: front entry {k} has neither 'gflops'/'fid' nor 'objectives'")
        if point is _MISSING:
            raise ConfigError(
                f"{source} has no {COST_UNITS[axis]} (front entry {k}): its search had no latency "
                "table; compare on the gflops axis"
            )
        if point is not None:
            points.append(point)
    extractor = data.get("extractor")
    return Front(name, tuple(points), extractor if isinstance(extractor, str) else None, axis=axis,
                 objective=own, latency_source=latency_source(data.get("latency_table")))  # fmt: skip


_BAD: Any = object()
_MISSING: Any = object()


def _entry_point(entry: Any, axis: str, objective: str) -> Point | None:
    """``(cost on axis, fid)`` of a front entry, None when failed, ``_BAD`` when unreadable,
    ``_MISSING`` when it has an FID but no cost on ``axis``."""
    if not isinstance(entry, Mapping):
        return _BAD
    if entry.get("status") == "failed":
        return None
    fid = cost = None
    for d in (entry, entry.get("record"), entry.get("metrics")):
        if not isinstance(d, Mapping) or "fid" not in d:
            continue
        if axis == "gflops" and "gflops" in d:
            fid, cost = d["fid"], d["gflops"]
            break
        seconds = d.get("predicted_latency_s")
        if axis == "latency" and seconds is not None:
            fid, cost = d["fid"], 1e3 * seconds if _finite_number(seconds) else seconds
            break
    if cost is None and "objectives" in entry:
        obj = entry["objectives"]
        if obj is None:
            return None
        if isinstance(obj, Sequence) and len(obj) == 2:
            if axis != objective:  # the driver's cost is the search's own objective, not this axis
                return _MISSING
            fid, cost = obj  # the search driver's order: (FID, cost)
    if cost is None:
        has_fid = any(isinstance(d, Mapping) and "fid" in d for d in (entry, entry.get("record")))
        return _MISSING if has_fid else _BAD
    return (float(cost), float(fid)) if _finite_number(cost) and _finite_number(fid) else None


@dataclass(frozen=True)
class Results:
    """A search's results read from a file: its label, where it came from, and the JSON."""

    name: str
    source: str
    data: Mapping[str, Any]


def read_results(path: str | os.PathLike[str], name: str | None = None) -> Results:
    """A results.json file (or a search folder holding one).

    :param name: the label; default the search folder's name (the file's parent folder).
    :raises ConfigError: for a missing or unreadable file or invalid JSON.
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
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p} has no 'front' list: is it a search's results.json?")
    label = name if name is not None else (p.parent.name if p.name == "results.json" else p.stem) or str(p)
    return Results(label, str(p), data)


def load_front(path: str | os.PathLike[str], name: str | None = None, axis: str | None = None) -> Front:
    """The front in a results.json file (or a search folder holding one), on ``axis`` (default: the
    search's own objective).

    :raises ConfigError: for a missing or unreadable file, invalid JSON, or no front.
    """
    res = read_results(path, name)
    return front_from_results(res.data, res.name, source=res.source, axis=axis)


def fronts_on_one_axis(
    searches: Sequence[Results], axis: str | None = None, objectives: Sequence[str] | None = None
) -> tuple[list[Front], str | None]:
    """The fronts of several searches' results on one cost axis (:func:`choose_axis`) and the note
    that says why, when the axis is not every search's own objective (``ddsm compare`` and
    ``GET /searches/compare`` alike).

    :param objectives: each search's own objective, when the results do not say (a running search).
    """
    own = list(objectives) if objectives is not None else [objective_of(r.data) for r in searches]
    chosen, note = choose_axis([(r.name, o) for r, o in zip(searches, own, strict=True)], axis)
    fronts = [front_from_results(r.data, r.name, source=r.source, axis=chosen, objective=o)
              for r, o in zip(searches, own, strict=True)]  # fmt: skip
    return fronts, note


def unique_names(fronts: Sequence[Front]) -> list[Front]:
    """The fronts with repeated names made unique (``a``, ``a#2``, ...), for tables and legends."""
    seen: dict[str, int] = {}
    out = []
    for f in fronts:
        seen[f.name] = seen.get(f.name, 0) + 1
        out.append(f if seen[f.name] == 1 else dataclasses.replace(f, name=f"{f.name}#{seen[f.name]}"))
    return out


def parse_reference(text: str | None) -> Point | None:
    """A reference point written ``'COST,FID'`` (``ddsm compare --ref``, the REST ``ref``), the cost in
    the comparison's unit (GFLOPs or ms per image); None stays None.

    :raises ConfigError: for anything but two finite numbers.
    """
    if text is None:
        return None
    try:
        g, f = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"the reference point is 'COST,FID' in the comparison's unit (GFLOPs or ms per image), "
            f"e.g. '12.5,40', got {text[:80]!r}"
        ) from None
    if not (math.isfinite(g) and math.isfinite(f)):
        raise ConfigError(f"the reference point must be two finite numbers, got {text[:80]!r}")
    return (g, f)


def format_table(comparison: Comparison) -> str:
    """A plain-text table of a comparison, one search per row."""
    rows = comparison.rows
    w = max([len("search")] + [len(r.name) for r in rows])
    ref, ideal, short = comparison.reference, comparison.ideal, SHORT_UNITS[comparison.axis]
    lines = [f"note: {comparison.note}"] if comparison.note else []
    lines += [
        f"cost axis: {comparison.unit}",
        f"reference point: {ref[0]:.4f} {short}, FID {ref[1]:.4f}   ideal: {ideal[0]:.4f} {short}, "
        f"FID {ideal[1]:.4f}",
        f"{'search':<{w}} {'points':>6} {'hypervolume':>12} {'normalized':>10} {'min ' + short:>10} "
        f"{'min FID':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<{w}} {r.n_points:>6} {r.hypervolume:>12.4f} {r.normalized:>10.4f} "
            f"{r.min_cost:>10.4f} {r.min_fid:>9.4f}"
        )
    lines.append(f"hypervolume: area dominated below the shared reference point ({short} x FID, larger is")
    lines.append("better); normalized: its share of the box between the ideal and the reference point.")
    return "\n".join(lines)
