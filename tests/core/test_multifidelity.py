"""Multi-fidelity search (images as the fidelity): spec settings, successive halving, run_search."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ddsm_core.errors import ConfigError
from ddsm_core.pick import run_bisection
from ddsm_core.results import build_results, cost_summary
from ddsm_core.search import (
    Evaluation,
    halving_step,
    non_dominated,
    promotion_order,
    run_search,
    state_front,
    successive_halving,
)
from ddsm_core.spec import SearchSpec

STEPS, WIDTHS = 6, (0.25, 0.5, 0.75, 1.0)


class ToyEvaluator:
    """FID = a quality term + a small-sample bias k / n that differs per genome (as a real FID's does);
    counts every (genome, n_images) call so dedup per rung can be checked."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[tuple[int, ...], int]] = Counter()

    def __call__(self, genome: tuple[int, ...], n: int) -> Evaluation:
        self.calls[(genome, n)] += 1
        quality = sum((3 - g) ** 2 * (i + 1) for i, g in enumerate(genome)) / len(genome)
        fid = quality + (20 + sum(genome)) / n
        cost = float(sum(g + 1 for g in genome))
        record = {"n_images": n, "network_calls": len(genome), "reused_fraction": 0.0, "fid": fid}
        return Evaluation((fid, cost), None, record)


def spec(**kw) -> SearchSpec:
    base = dict(steps=STEPS, widths=WIDTHS, population=12, generations=4, n_images=64, final_images=128,
                mutation_rate=0.1, rungs=(8, 16), promote=0.25, batch_size=8)  # fmt: skip
    return SearchSpec(**{**base, **kw})


def test_rungs_default_off_and_round_trip_through_json() -> None:
    assert SearchSpec().rungs == () and SearchSpec().ladder == (SearchSpec().n_images,)
    s = spec()
    assert s.ladder == (8, 16, 64)
    assert SearchSpec.from_json(s.to_json()) == s
    assert json.loads(s.to_json())["rungs"] == [8, 16]
    old = {k: v for k, v in SearchSpec().to_dict().items() if k not in ("rungs", "promote")}
    assert SearchSpec.from_dict(old) == SearchSpec()  # stored configs from before stay readable


@pytest.mark.parametrize(
    "change",
    [{"rungs": (16, 8)}, {"rungs": (8, 64)}, {"rungs": (1, 8)}, {"rungs": (8, 128)}, {"promote": 0.0},
     {"promote": 1.5}, {"rungs": (8.5,)}],
)  # fmt: skip
def test_bad_fidelity_settings_are_config_errors(change: dict) -> None:
    with pytest.raises(ConfigError, match="rungs|promote"):
        spec(**change)


def test_promotion_order_is_nsga2s_rank_then_crowding() -> None:
    points = [(1.0, 10.0), (5.0, 1.0), (3.0, 5.0), (4.0, 6.0), (2.0, 8.0), (9.0, 9.0)]
    order = promotion_order(points)
    first = set(non_dominated(points))
    assert set(order[: len(first)]) == first
    assert set(order[:2]) == {0, 1}  # the front's two ends (infinite crowding) first
    assert order[-1] == 5 and sorted(order) == list(range(len(points)))


def test_successive_halving_spends_each_rung_on_the_promoted_fraction_only() -> None:
    ev = ToyEvaluator()
    genomes = [tuple((i + j) % 4 for j in range(STEPS)) for i in range(4)]
    genomes += [(g,) * STEPS for g in range(4)]
    rng = np.random.default_rng(0)
    while len(genomes) < 16:
        g = tuple(int(v) for v in rng.integers(0, 4, STEPS))
        genomes += [] if g in genomes else [g]
    out = successive_halving(genomes, ev, (8, 16, 64), 0.25)
    per_rung = Counter(n for _, n in ev.calls)
    assert per_rung == {8: 16, 16: 4, 64: 1}
    assert max(ev.calls.values()) == 1  # never twice at one rung
    top = [(g, e) for g, e in zip(genomes, out, strict=True) if e.record["fidelity"]["top"]]
    assert len(top) == 1
    worst_top = max(e.objectives[0] for _, e in top)
    for g, e in zip(genomes, out, strict=True):
        fid = e.record["fidelity"]
        assert [x["n_images"] for x in fid["evaluations"]] == [8, 16, 64][: fid["rung"] + 1]
        if not fid["top"]:
            assert e.objectives[0] >= worst_top  # conservative: never better than a promoted one
            assert e.objectives[1] == ev(g, 8).objectives[1]  # the real cost


def test_a_candidate_failing_at_a_low_rung_is_failed_and_never_promoted() -> None:
    ev = ToyEvaluator()
    bad = (0,) * STEPS

    def evaluate(g, n):
        return Evaluation(None, "diverged", {"n_images": n}) if g == bad else ev(g, n)

    out = successive_halving([bad, (1,) * STEPS, (3,) * STEPS], evaluate, (8, 64), 1.0)
    assert out[0].objectives is None and out[0].reason == "diverged"
    assert out[0].record["fidelity"]["rung"] == 0
    assert all(e.record["fidelity"]["top"] for e in out[1:])


def test_halving_step_replayed_from_results_in_any_order_promotes_what_successive_halving_does() -> None:
    """The shared promotion logic: the service replays it from stored rows (in whatever order workers
    finished them), the local executor evaluates rung by rung; both must end with the same evaluations."""
    ev = ToyEvaluator()
    rng = np.random.default_rng(4)
    genomes = list(dict.fromkeys(tuple(int(v) for v in rng.integers(0, 4, STEPS)) for _ in range(20)))
    ladder, promote = (8, 16, 64), 0.3
    expected = successive_halving(genomes, ToyEvaluator(), ladder, promote)
    results: list[dict] = [{}, {}, {}]
    seen = []
    while not (step := halving_step(genomes, ladder, promote, results)).done:
        assert step.outcome is None and step.todo and set(step.todo) <= set(genomes)
        seen.append((step.level, len(step.todo)))
        for g in reversed(step.todo):  # finished in another order: the outcome does not depend on it
            results[step.level][g] = ev(g, ladder[step.level])
        again = halving_step(genomes, ladder, promote, results)  # idempotent: nothing new to do there
        assert again.done or again.level == step.level + 1
    assert seen == [(0, len(genomes)), (1, 6), (2, 2)]  # ceil(0.3 x 20), then ceil(0.3 x 6)
    assert step.outcome == expected
    # an evaluation of a genome that was not promoted to a rung (e.g. a stale row) is ignored
    stray = next(g for g in genomes if g not in results[1])
    results[1][stray] = ev(stray, 16)
    assert halving_step(genomes, ladder, promote, results).outcome == expected


def test_halving_step_asks_the_first_rung_for_a_new_generation_and_keeps_failures_out() -> None:
    genomes = [(0,) * STEPS, (1,) * STEPS, (3,) * STEPS]
    first = halving_step(genomes, (8, 64), 1.0, [])
    assert (first.level, first.todo, first.outcome) == (0, genomes, None)
    failed = Evaluation(None, "diverged", {"n_images": 8})
    ev = ToyEvaluator()
    results = [{genomes[0]: failed, genomes[1]: ev(genomes[1], 8), genomes[2]: ev(genomes[2], 8)}, {}]
    step = halving_step(genomes, (8, 64), 1.0, results)
    assert step.level == 1 and set(step.todo) == set(genomes[1:])  # a failed genome is never promoted


def run(tmp: Path, s: SearchSpec, ev: ToyEvaluator | None = None):
    ev = ev or ToyEvaluator()
    return run_search(
        s.search_config(), ev, tmp, seed=s.seed, n_images=s.n_images, final_images=s.final_images,
        weight=s.weight, progress=False, finalists={"full": s.full_width_genome()}, rungs=s.rungs,
        promote=s.promote, pick_rule=s.pick_rule,
    ), ev  # fmt: skip


def test_a_multifidelity_search_fronts_only_top_rung_candidates_and_costs_less(tmp_path: Path) -> None:
    s = spec()
    mf, ev = run(tmp_path / "mf", s)
    flat, _ = run(tmp_path / "flat", spec(rungs=()))
    cands = mf.driver.candidates
    front = mf.driver.front()
    assert front and all(c.record["fidelity"]["top"] for c in front)
    assert any(not c.record["fidelity"]["top"] for c in cands)  # some were stopped early
    assert mf.pick.record["n_images"] == s.n_images
    assert set(ev.calls.values()) == {1}  # a genome at most once per rung (and finalists once)
    stored = json.loads((tmp_path / "mf" / "search_state.json").read_text())
    assert [c.genome for c in state_front(stored)] == [c.genome for c in front]
    results = build_results(s, cands, mf.driver.history, {k: e.record for k, e in mf.final.items()},
                            extractor="toy", checkpoint="c", stats="s",
                            bisection=run_bisection(s, mf))  # fmt: skip
    rungs = results["cost"]["rungs"]
    assert [r["n_images"] for r in rungs] == [8, 16, 64]
    assert rungs[0]["evaluations"] == len(cands) > rungs[1]["evaluations"] > rungs[2]["evaluations"]
    assert results["cost"]["search_network_calls"] == sum(r["image_steps"] for r in rungs)
    flat_cost = cost_summary(flat.driver.candidates, [])
    assert flat_cost["rungs"] == [{"n_images": 64, "evaluations": len(flat.driver.candidates),
                                   "image_steps": flat_cost["search_network_calls"]}]  # fmt: skip
    assert results["cost"]["search_network_calls"] < 0.5 * flat_cost["search_network_calls"]


def test_a_multifidelity_search_is_deterministic_and_resumes_to_the_same_end(tmp_path: Path) -> None:
    s = spec()
    a, _ = run(tmp_path / "a", s)
    b, _ = run(tmp_path / "b", s)
    assert [c.to_dict() for c in a.driver.candidates] == [c.to_dict() for c in b.driver.candidates]
    # stop after two generations, then resume in the same folder
    two = spec(generations=2)
    run(tmp_path / "c", two)
    state = json.loads((tmp_path / "c" / "search_state.json").read_text())
    state["config"]["generations"] = s.generations
    (tmp_path / "c" / "search_state.json").write_text(json.dumps(state))
    c, ev = run(tmp_path / "c", s)
    assert c.resumed
    assert [x.to_dict() for x in c.driver.candidates] == [x.to_dict() for x in a.driver.candidates]
    assert all((g, 8) not in ev.calls for g in (x.genome for x in a.driver.candidates if x.generation <= 2))


def test_flat_search_records_have_no_fidelity_and_the_same_front(tmp_path: Path) -> None:
    s = spec(rungs=())
    r, ev = run(tmp_path, s)
    assert all("fidelity" not in c.record for c in r.driver.candidates)
    assert {n for _, n in ev.calls} == {s.n_images, s.final_images}
    assert not math.isnan(r.pick.fid)


# ---------------------------------------------------------------------------- rung metric: paired
class PairedToy(ToyEvaluator):
    """ToyEvaluator plus a ``paired_distance`` whose order differs from the rung FID's: the quality
    term alone (0 for full width) plus its own small-sample noise, unlike the FID's per-genome bias."""

    def __call__(self, genome: tuple[int, ...], n: int) -> Evaluation:
        ev = super().__call__(genome, n)
        quality = sum((3 - g) ** 2 * (i + 1) for i, g in enumerate(genome)) / len(genome)
        noise = 32 * (7 * sum(i * g for i, g in enumerate(genome)) % 11) / n
        return Evaluation(ev.objectives, None, {**ev.record, "paired_distance": quality + noise})


def evaluation(fid: float, cost: float, paired: float | None, n: int = 8) -> Evaluation:
    record = {"n_images": n, "fid": fid} | ({} if paired is None else {"paired_distance": paired})
    return Evaluation((fid, cost), None, record)


def test_rung_metric_defaults_to_paired_for_new_searches_and_fid_for_stored_ones() -> None:
    assert SearchSpec().rung_metric == "paired" and spec().rung_metric == "paired"
    s = spec(rung_metric="fid")
    assert SearchSpec.from_json(s.to_json()) == s and json.loads(s.to_json())["rung_metric"] == "fid"
    assert SearchSpec.from_json(spec().to_json()).rung_metric == "paired"
    stored = {k: v for k, v in spec().to_dict().items() if k != "rung_metric"}  # before the setting
    assert SearchSpec.from_dict(stored) == spec(rung_metric="fid")
    assert spec().paired_rung(8) and spec().paired_rung(16) and not spec().paired_rung(64)
    assert not spec(rung_metric="fid").paired_rung(8) and not spec(rungs=()).paired_rung(64)


@pytest.mark.parametrize("bad", ["kid", "", "PAIRED", None, 1])
def test_a_bad_rung_metric_is_a_config_error_naming_the_choices(bad: object) -> None:
    with pytest.raises(ConfigError, match="rung_metric .*allowed: paired, fid"):
        spec(rung_metric=bad)
    with pytest.raises(ConfigError, match="rung metric"):
        halving_step([(0,) * STEPS], (8, 64), 1.0, [], metric=str(bad))


def test_paired_promotion_follows_the_paired_distance_where_the_rung_fid_disagrees() -> None:
    a, b, c = (0,) * STEPS, (1,) * STEPS, (2,) * STEPS
    # equal cost: FID at the rung ranks a < b < c, the paired distance c < b < a
    rung = {a: evaluation(10.0, 5.0, 3.0), b: evaluation(11.0, 5.0, 2.0), c: evaluation(12.0, 5.0, 1.0)}
    by_fid = halving_step([a, b, c], (8, 64), 0.33, [rung], metric="fid")
    by_paired = halving_step([a, b, c], (8, 64), 0.33, [rung], metric="paired")
    assert (by_fid.level, by_fid.todo) == (1, [a])
    assert (by_paired.level, by_paired.todo) == (1, [c])
    top = {c: evaluation(20.0, 5.0, None, 64)}
    out = halving_step([a, b, c], (8, 64), 0.33, [rung, top], metric="paired").outcome
    assert out is not None and [e.record["fidelity"]["top"] for e in out] == [False, False, True]
    # stand-ins: worst top FID + the paired distance above the rung's best, in the rung's FID units
    # (FID span 2 over distance span 2 here): b +1, a +2; never better than the promoted c
    assert [e.objectives for e in out] == [(22.0, 5.0), (21.0, 5.0), (20.0, 5.0)]
    assert [x["paired_distance"] for x in out[0].record["fidelity"]["evaluations"]] == [3.0]


def test_paired_halving_keeps_stand_ins_behind_promoted_ones_ordered_by_their_distance() -> None:
    ev = PairedToy()
    rng = np.random.default_rng(1)
    genomes = list(dict.fromkeys(tuple(int(v) for v in rng.integers(0, 4, STEPS)) for _ in range(24)))
    ladder = (8, 16, 64)
    out = successive_halving(genomes, ev, ladder, 0.3, "paired")
    by_fid = successive_halving(genomes, PairedToy(), ladder, 0.3, "fid")
    promoted = lambda res: {g for g, e in zip(genomes, res, strict=True) if e.record["fidelity"]["top"]}  # noqa: E731
    assert promoted(out) != promoted(by_fid)  # the metrics disagree on this generation
    worst_top = max(e.objectives[0] for e in out if e.record["fidelity"]["top"])
    for level in range(2):
        stopped = [(g, e) for g, e in zip(genomes, out, strict=True)
                   if e.record["fidelity"]["rung"] == level]  # fmt: skip
        assert stopped
        assert all(e.objectives[0] >= worst_top for _, e in stopped)  # conservative
        ranked = sorted(stopped, key=lambda ge: ev(ge[0], ladder[level]).record["paired_distance"])
        stand_ins = [e.objectives[0] for _, e in ranked]
        assert stand_ins == sorted(stand_ins)  # ordered by the distance that stopped them
    # replayed from results in any order: the same outcome (the service's path)
    results: list[dict] = [{}, {}, {}]
    while not (step := halving_step(genomes, ladder, 0.3, results, "paired")).done:
        for g in reversed(step.todo):
            results[step.level][g] = ev(g, ladder[step.level])
    assert step.outcome == out


def test_paired_metric_fails_a_rung_evaluation_without_a_distance_instead_of_ranking_it() -> None:
    a, b = (0,) * STEPS, (3,) * STEPS
    rung = {a: evaluation(10.0, 5.0, None), b: evaluation(12.0, 6.0, 0.0)}
    step = halving_step([a, b], (8, 64), 1.0, [rung], metric="paired")
    assert step.todo == [b]  # a cannot be ranked: never promoted
    out = halving_step([a, b], (8, 64), 1.0, [rung, {b: evaluation(12.0, 6.0, None, 64)}], "paired").outcome
    assert out is not None and out[0].objectives is None and "no paired distance" in out[0].reason
    assert out[1].objectives == (12.0, 6.0)


def test_a_paired_rungs_search_is_deterministic_and_differs_from_the_fid_ranked_one(tmp_path: Path) -> None:
    def go(folder: str, metric: str):
        return run_search(
            spec().search_config(), PairedToy(), tmp_path / folder, seed=0, n_images=64, final_images=128,
            weight=1.5, progress=False, rungs=(8, 16), promote=0.25, rung_metric=metric,
        )  # fmt: skip

    a, b, f = go("a", "paired"), go("b", "paired"), go("f", "fid")
    assert [c.to_dict() for c in a.driver.candidates] == [c.to_dict() for c in b.driver.candidates]
    assert [c.to_dict() for c in a.driver.candidates] != [c.to_dict() for c in f.driver.candidates]
    assert all(c.record["fidelity"]["top"] for c in a.driver.front())
