"""The tolerance pick's bisection (ddsm_core.pick), alone and inside run_search. Torch-free."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ddsm_core.pick import bisect_front, bisection_members, bisection_summary, resolution
from ddsm_core.search import Candidate, Evaluation, SearchConfig, run_search
from ddsm_core.spec import SearchSpec

FULL = (9, 9)
MEMBERS = [(i, i) for i in range(9)]  # cheapest first; full width above them


def decide(members: list[tuple[int, ...]], passes: Any) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Run the bisection to the end with ``passes(index)`` as each probe's verdict: (pick, probes)."""
    verdicts: dict[tuple[int, ...], bool | None] = {}
    while not (step := bisect_front(members, FULL, verdicts)).done:
        assert step.probe not in verdicts  # never asks twice
        verdicts[step.probe] = passes(members.index(step.probe))  # type: ignore[arg-type]
    assert list(step.probes) == list(verdicts)  # the replay lists the probes in the order asked
    assert step.pick is not None
    return step.pick, list(step.probes)


@pytest.mark.parametrize("first_pass", range(len(MEMBERS) + 1))
def test_monotone_verdicts_give_the_cheapest_member_that_passes(first_pass: int) -> None:
    pick, probes = decide(MEMBERS, lambda i: i >= first_pass)
    assert pick == (MEMBERS[first_pass] if first_pass < len(MEMBERS) else FULL)
    assert len(probes) <= math.ceil(math.log2(len(MEMBERS) + 1))


def test_when_nothing_passes_the_pick_is_full_width_and_the_probes_climb_to_it() -> None:
    pick, probes = decide(MEMBERS, lambda i: False)
    assert pick == FULL
    assert [MEMBERS.index(p) for p in probes] == [4, 7, 8]  # each probe above the last failed one
    # no verdict (a failed evaluation, no features) is no evidence: the same as failing
    assert decide(MEMBERS, lambda i: None) == (pick, probes)
    assert bisect_front([], FULL, {}).pick == FULL  # a front of full width alone: nothing to probe


def test_non_monotone_verdicts_give_a_passing_member_above_a_failed_one() -> None:
    """Quality need not fall with cost along a front: with verdicts pass, fail, pass, ... the answer is a
    member shown equal whose cheaper neighbour failed, not necessarily the cheapest that would pass."""
    passes = [True, False, False, True, False, True, True, False, True]
    pick, probes = decide(MEMBERS, lambda i: passes[i])
    k = MEMBERS.index(pick)
    assert passes[k] and pick in probes and k > 0 and MEMBERS[k - 1] in probes and not passes[k - 1]
    assert k != passes.index(True)  # the cheapest passing member (index 0) was never probed
    assert MEMBERS[0] not in probes


def test_extra_verdicts_are_ignored_and_the_replay_is_pure() -> None:
    verdicts = {MEMBERS[4]: True, MEMBERS[2]: False, (7, 7, 7): True}
    step = bisect_front(MEMBERS, FULL, verdicts)
    assert step.probe == MEMBERS[3] and step.probes == (MEMBERS[4], MEMBERS[2])
    assert bisect_front(MEMBERS, FULL, verdicts) == step


def _cand(genome: tuple[int, ...], fid: float, cost: float, index: int) -> Candidate:
    return Candidate(genome, (fid, cost), None, 0, index, {"n_images": 8})


def test_members_are_the_front_cheapest_first_without_full_width() -> None:
    front = [_cand((2, 2), 3.0, 2.0, 0), _cand(FULL, 1.0, 9.0, 1), _cand((1, 1), 5.0, 1.0, 2)]
    assert bisection_members(front, FULL) == [(1, 1), (2, 2)]


def test_the_summary_states_the_tolerance_every_probe_and_why_one_was_undecided() -> None:
    spec = SearchSpec(widths=(0.5, 1.0), steps=2, population=4, tolerance=0.1)
    full = spec.full_width_genome()
    front = [_cand((0, 0), 30.0, 1.0, 0), _cand((0, 1), 20.0, 2.0, 1), _cand(full, 10.0, 4.0, 2)]
    members = bisection_members(front, full)
    interval = {"diff": 0.5, "low": -0.2, "high": 0.9, "tolerance": 1.2, "equal_quality": True}
    step = bisect_front(members, full, {(0, 1): True, (0, 0): None})
    records = {full: {"fid": 12.0, "gflops": 4.0}, (0, 1): {"fid": 12.5, "gflops": 2.0},
               (0, 0): {"fid": None, "reason": "diverged", "gflops": 1.0}}  # fmt: skip
    out = bisection_summary(spec, members, step, records, {(0, 1): interval, (0, 0): None}, front)
    assert out["rule"] == "tolerance" and out["rel_tolerance"] == 0.1
    assert out["tolerance"] == pytest.approx(1.2) and out["pick"] == [0, 1] and out["members"] == 2
    assert [p["genome"] for p in out["probes"]] == [[0, 1], [0, 0]]
    first, second = out["probes"]
    assert first["equal_quality"] and first["paired"] == interval and first["search_fid"] == 20.0
    assert not second["equal_quality"] and second["paired"] is None and "diverged" in second["reason"]


def test_a_failed_probe_says_whether_it_is_worse_or_needs_more_images() -> None:
    tol = {"tolerance": 0.28, "equal_quality": False}
    assert resolution({**tol, "diff": 0.96, "low": 0.46, "high": 1.55}, 8000) == {
        "verdict": "worse",
        "images": None,
    }
    assert resolution({**tol, "diff": 0.30, "low": -0.1, "high": 0.9}, 8000)["verdict"] == "not equal"
    # the digits DDPM-20 51% strategy at 2000 images: +0.22 [-0.41, +0.92] against 0.35
    out = resolution(
        {"tolerance": 0.35, "equal_quality": False, "diff": 0.22, "low": -0.41, "high": 0.92}, 2000
    )
    assert out is not None and out["verdict"] == "inconclusive"
    assert out["images"] == int(2000 * (0.70 / 0.13) ** 2) + 1  # half-width 0.70 must shrink to 0.13
    assert resolution({**tol, "equal_quality": True, "diff": 0.0, "low": -0.2, "high": 0.2}, 8000) is None
    assert resolution(None, 8000) is None


def test_the_report_says_how_many_images_would_resolve_an_inconclusive_probe() -> None:
    from ddsm_core.report import _bisection_lines

    interval = {"diff": 0.22, "low": -0.41, "high": 0.92, "tolerance": 0.35, "equal_quality": False}
    probe = {"genome": [0, 1], "strategy": "s", "gflops": 1.0, "search_fid": 7.0, "fid": 7.2,
             "paired": interval, "equal_quality": False}  # fmt: skip
    probe["resolution"] = resolution(interval, 2000)
    text = "\n".join(_bisection_lines({"members": 1, "probes": [probe], "pick": [1, 1]}))
    assert "inconclusive" in text and f"about {resolution(interval, 2000)['images']} paired images" in text
    worse = {**interval, "diff": 2.0, "low": 1.0, "high": 3.0}
    probe = {**probe, "paired": worse, "resolution": resolution(worse, 2000)}
    text = "\n".join(_bisection_lines({"members": 1, "probes": [probe], "pick": [1, 1]}))
    assert "| worse |" in text and "inconclusive" not in text


CFG = SearchConfig(steps=4, n_widths=4, population=8, generations=3, mutation_rate=0.1, crossover="one_point")
FULL4 = (3, 3, 3, 3)


def _evaluate(calls: list[tuple[tuple[int, ...], int]]) -> Any:
    def evaluate(genome: tuple[int, ...], n: int) -> Evaluation:
        calls.append((genome, n))
        cost = float(sum(g + 1 for g in genome))
        fid = 5.0 + sum((3 - g) ** 2 * (1 + i) for i, g in enumerate(genome)) + 3.0 / n
        return Evaluation((fid, cost), None, {"n_images": n, "fid": fid, "gflops": cost})

    return evaluate


def test_run_search_picks_the_cheapest_front_member_the_judge_passes(tmp_path: Path) -> None:
    """A judge whose verdict is monotone in cost along the front (FID within 8 of full width's): the
    tolerance pick is the cheapest front member it passes, each probe evaluated once at final_images."""
    calls: list[tuple[tuple[int, ...], int]] = []
    kw: dict[str, Any] = dict(seed=1, n_images=10, final_images=100, weight=0.5, progress=False,
                              finalists={"full": FULL4})  # fmt: skip
    judged: list[tuple[int, ...]] = []

    def judge(genome: tuple[int, ...], ev: Evaluation) -> dict[str, Any]:
        judged.append(genome)
        assert ev.record["n_images"] == 100
        return {"high": ev.record["fid"] - 5.03, "equal_quality": ev.record["fid"] - 5.03 <= 8.0}

    run = run_search(CFG, _evaluate(calls), tmp_path / "t", pick_rule="tolerance", judge=judge, **kw)
    front = run.driver.front()
    members = bisection_members(front, FULL4)
    passing = [g for g in members if run.driver.lookup(g).fid - 5.3 <= 8.0]  # type: ignore[union-attr]
    assert run.pick.genome == (passing[0] if passing else FULL4) and run.bisection is not None
    assert run.final["weighted"].record["n_images"] == 100
    assert set(run.final) == {"pick", "weighted", "knee", "full"} and list(run.bisection.probes) == judged
    final_calls = [g for g, n in calls if n == 100]
    assert len(final_calls) == len(set(final_calls))  # a probe that is also a finalist: measured once
    assert set(final_calls) == {run.driver.pick(0.5).genome, run.knee.genome, FULL4, *judged}
    # the weighted rule: the same search, the weighted pick, no probes
    weighted = run_search(CFG, _evaluate([]), tmp_path / "w", **kw)
    assert weighted.pick.genome == run.driver.pick(0.5).genome and weighted.bisection is None
    assert set(weighted.final) == {"pick", "knee", "full"}
