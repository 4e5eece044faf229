"""The tolerance pick: the cheapest Pareto-front member of equal quality, found by bisection.

"Equal quality" is a paired statement (:mod:`ddsm_core.paired`): the member and full width are sampled
from the same ``final_images`` seeds (the finalists', held out from the search's by default:
:attr:`ddsm_core.spec.SearchSpec.final_first_seed`), and the paired interval of FID(member) - FID(full
width) (a bootstrap, or a half-sampling interval with fewer images than feature dimensions) must end
within the tolerance. The search's own FIDs (``n_images`` images) only order the front: they are too
noisy to choose on (bench/digits_search/notes.md, "Why the protocol changed").

The front, sorted by cost, is taken to lose quality as it gets cheaper; full width is the top end and
qualifies by definition. Bisection measures about log2(front size) members. It is a pure replay of
the verdicts so far (:func:`bisect_front`), like :func:`ddsm_core.search.halving_step`: ``ddsm
search`` measures each probe in-process, the service's controller sends it as a finalist task and
decides on the stored features; the same verdicts give the same probes and the same pick. With
non-monotone verdicts the answer is a member that passes whose cheaper neighbour along the probes
failed, not necessarily the cheapest member that would pass. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# ddsm_core.search (and through it ddsm_core.spec) imports this module, so the types read here are
# described as protocols, not imported: no import cycle.
Genome = tuple[int, ...]


class SearchSpec(Protocol):
    """What the bisection reads of a search's spec (``ddsm_core.spec.SearchSpec``)."""

    @property
    def tolerance(self) -> float: ...

    def full_width_genome(self) -> Genome: ...


class Candidate(Protocol):
    """What bisection reads of a front member (``ddsm_core.search.Candidate``)."""

    @property
    def genome(self) -> Genome: ...

    @property
    def cost(self) -> float: ...

    @property
    def fid(self) -> float: ...


def bisection_members(front: Sequence[Candidate], full: Genome) -> list[Genome]:
    """The genomes bisection runs over: the front cheapest first, without full width (the top end)."""
    ordered = sorted(front, key=lambda c: (c.cost, c.fid))
    return list(dict.fromkeys(c.genome for c in ordered if c.genome != tuple(full)))


@dataclass(frozen=True)
class BisectionStep:
    """Where the bisection stands: ``probe`` is the member to measure next (None once decided),
    ``pick`` the answer once decided, ``probes`` the members decided so far in bisection order."""

    probe: Genome | None
    pick: Genome | None
    probes: tuple[Genome, ...]

    @property
    def done(self) -> bool:
        return self.probe is None


def bisect_front(
    members: Sequence[Genome], full: Genome, verdicts: Mapping[Genome, bool | None]
) -> BisectionStep:
    """The next probe, or the pick, replayed from the ``verdicts`` so far (extra entries are ignored).

    :param members: :func:`bisection_members` (cheapest first, full width left out).
    :param verdicts: genome -> whether it is of equal quality; None (no interval: a failed evaluation,
        no features) counts as not equal: a member is picked only on evidence.
    :return: the member at the middle of the open range first; once the range is empty the pick is
        the lowest member shown equal, or ``full`` when none was.
    """
    lo, hi = 0, len(members)  # hi: full width, equal quality by definition
    probes: list[Genome] = []
    while lo < hi:
        mid = (lo + hi) // 2
        genome = tuple(members[mid])
        if genome not in verdicts:
            return BisectionStep(genome, None, tuple(probes))
        probes.append(genome)
        if verdicts[genome]:
            hi = mid
        else:
            lo = mid + 1
    pick = tuple(members[lo]) if lo < len(members) else tuple(full)
    return BisectionStep(None, pick, tuple(probes))


def passed(interval: Mapping[str, Any] | None) -> bool:
    """A probe's verdict from its paired interval: equal quality shown; no interval is no evidence."""
    return bool(interval and interval.get("equal_quality"))


def probe_verdict(
    full: Mapping[str, Any],
    record: Mapping[str, Any],
    features: Mapping[Genome, Any],
    ref: Any,
    *,
    seed: int,
    rel_tolerance: float,
) -> dict[str, Any] | None:
    """A probe's paired interval vs full width with its ``equal_quality`` verdict (as
    :func:`ddsm_core.paired.paired_vs_full` gives a finalist's), None when it cannot be had (either
    evaluation failed or kept no features). Both executors decide with this function."""
    from ddsm_core.paired import paired_vs_full

    if full.get("fid") is None:
        return None
    tolerance = rel_tolerance * float(full["fid"])
    out = paired_vs_full({"full": full, "probe": record}, features, ref, seed=seed, tolerance=tolerance)
    return out.get("probe")


def resolution(interval: Mapping[str, Any] | None, n_images: int | None) -> dict[str, Any] | None:
    """Why a probe that was not shown equal failed: ``worse`` (the whole interval is above the
    tolerance), ``inconclusive`` (the point estimate is within it, the upper end is not: too few
    images to tell) or ``not equal`` (the estimate is above it). For ``inconclusive``, ``images``
    estimates the paired images that would resolve it, from the interval's upper half-width shrinking
    as 1/sqrt(images): a planning figure, not a promise (the estimate itself moves with more images)."""
    if not interval or interval.get("equal_quality") or interval.get("tolerance") is None:
        return None
    tol, diff, low, high = (float(interval[k]) for k in ("tolerance", "diff", "low", "high"))
    if low > tol:
        return {"verdict": "worse", "images": None}
    if diff >= tol:
        return {"verdict": "not equal", "images": None}
    need = None
    if n_images and high > diff:
        need = int(n_images * ((high - diff) / (tol - diff)) ** 2) + 1
    return {"verdict": "inconclusive", "images": need}


def tolerance_of(rel_tolerance: float, full: Mapping[str, Any]) -> float | None:
    """The absolute tolerance (FID) for full width's finalist record, None if it failed."""
    return None if full.get("fid") is None else rel_tolerance * float(full["fid"])


def bisection_summary(
    spec: SearchSpec,
    members: Sequence[Genome],
    step: BisectionStep,
    records: Mapping[Genome, Mapping[str, Any]],
    paired: Mapping[Genome, Mapping[str, Any] | None],
    front: Sequence[Candidate],
) -> dict[str, Any]:
    """results.json's ``bisection``: the rule, the tolerance (relative and absolute), every probe in
    bisection order with its cost, FIDs, paired interval and verdict, and the pick."""
    by_genome = {c.genome: c for c in front}
    full = records.get(spec.full_width_genome(), {})
    probes = []
    for genome in step.probes:
        rec, cand, interval = records.get(genome, {}), by_genome.get(genome), paired.get(genome)
        probes.append(
            {
                "genome": list(genome),
                "strategy": rec.get("strategy"),
                "cost": None if cand is None else cand.cost,
                "gflops": rec.get("gflops"),
                "search_fid": None if cand is None else cand.fid,
                "fid": rec.get("fid"),
                "n_images": rec.get("n_images"),
                "network_calls": rec.get("network_calls"),
                "paired": None if interval is None else dict(interval),
                "equal_quality": bool(interval and interval.get("equal_quality")),
                "resolution": resolution(interval, rec.get("n_images")),
                "reason": None if interval is not None else _why_undecided(rec, full),
            }
        )
    return {
        "rule": "tolerance",
        "rel_tolerance": spec.tolerance,
        "tolerance": tolerance_of(spec.tolerance, full),
        "members": len(members),
        "probes": probes,
        "pick": None if step.pick is None else list(step.pick),
    }


def run_bisection(spec: SearchSpec, run: Any) -> dict[str, Any] | None:
    """results.json's ``bisection`` of a local run (:func:`ddsm_core.search.run_search`); None with
    the weighted rule."""
    if run.bisection is None:
        return None
    records = {g: ev.record for g, ev in run.probes.items()}
    records[spec.full_width_genome()] = run.final["full"].record
    return bisection_summary(spec, run.members, run.bisection, records, run.paired, run.driver.front())


def _why_undecided(record: Mapping[str, Any], full: Mapping[str, Any]) -> str:
    if full.get("fid") is None:
        return "full width's evaluation failed: no tolerance"
    if record.get("fid") is None:
        return f"evaluation failed: {record.get('reason') or 'no FID'}"
    return "no paired interval (no per-image features kept): not shown equal"
