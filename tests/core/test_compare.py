"""Comparing searches: exact 2-D hypervolume, one shared reference point, results.json, ``ddsm compare``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ddsm_core.compare import (
    Front,
    choose_axis,
    compare_fronts,
    front_from_results,
    hypervolume_2d,
    load_front,
    objective_of,
    reference_point,
)
from ddsm_core.errors import ConfigError
from ddsm_core.search import Candidate, SearchConfig, SearchDriver
from tests.support import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_hypervolume_of_a_hand_computed_staircase() -> None:
    # (1, 3), (2, 2), (3, 1) below (4, 4): columns 1 x 1 + 1 x 2 + 1 x 3 = 6
    pts = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    assert hypervolume_2d(pts, (4.0, 4.0)) == pytest.approx(6.0)
    assert hypervolume_2d(list(reversed(pts)), (4.0, 4.0)) == pytest.approx(6.0)  # order does not matter
    assert hypervolume_2d([*pts, (2.5, 2.5), (3.0, 3.0)], (4.0, 4.0)) == pytest.approx(6.0)  # dominated
    assert hypervolume_2d([*pts, (5.0, 0.0), (0.5, 4.0)], (4.0, 4.0)) == pytest.approx(6.0)  # outside the box
    assert hypervolume_2d([(0.0, 0.0)], (2.0, 3.0)) == pytest.approx(6.0)
    assert hypervolume_2d([], (4.0, 4.0)) == 0.0


def test_hypervolume_matches_pymoo_on_random_fronts() -> None:
    from pymoo.indicators.hv import HV

    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.uniform(0, 10, size=(int(rng.integers(1, 30)), 2))
        ref = np.array([10.5, 11.0])
        assert hypervolume_2d([tuple(p) for p in pts], tuple(ref)) == pytest.approx(HV(ref_point=ref)(pts))


def test_the_reference_point_is_shared_and_110_percent_of_the_worst_values() -> None:
    a = Front("a", ((1.0, 30.0), (4.0, 10.0)))
    b = Front("b", ((2.0, 20.0), (8.0, 5.0)))
    assert reference_point([a, b]) == pytest.approx((8.8, 33.0))
    cmp = compare_fronts([a, b])
    assert cmp.reference == pytest.approx((8.8, 33.0)) and cmp.ideal == (1.0, 5.0)
    ha = 7.8 * 3 + 4.8 * 20  # a: (1, 30) to x = 4, then (4, 10) to the reference
    hb = 6.0 * 13 + 0.8 * 28  # b: (2, 20) to x = 8, then (8, 5)
    assert [r.hypervolume for r in cmp.rows] == pytest.approx([ha, hb])
    assert cmp.rows[0].normalized == pytest.approx(ha / (7.8 * 28))
    # the same front scores the same against the same reference, whatever it is compared with
    alone = compare_fronts([a], cmp.reference)
    assert alone.rows[0].hypervolume == pytest.approx(ha)


def test_a_dominating_front_has_the_larger_hypervolume() -> None:
    worse = Front("worse", ((2.0, 30.0), (5.0, 12.0), (9.0, 8.0)))
    better = Front("better", tuple((g * 0.9, f * 0.9) for g, f in worse.points))
    rows = compare_fronts([worse, better]).rows
    assert rows[1].hypervolume > rows[0].hypervolume > 0


def test_compare_rejects_what_it_cannot_compare() -> None:
    with pytest.raises(ConfigError, match="at least one front"):
        compare_fronts([])
    with pytest.raises(ConfigError, match="'e' has no point"):
        compare_fronts([Front("e", ())])
    with pytest.raises(ConfigError, match="different feature extractors"):
        compare_fronts([Front("a", ((1, 2),), "inception"), Front("b", ((1, 2),), "domain:digits-cnn-v1")])
    with pytest.raises(ConfigError, match="two finite numbers"):
        Front("x", ((1.0, float("nan")),))
    with pytest.raises(ConfigError, match="negative objective values"):
        compare_fronts([Front("a", ((-1.0, 2.0),))])


def _results(fronts: list[tuple[float, float]], extractor: str = "domain:digits-cnn-v1") -> dict:
    """A results.json the way ``ddsm search`` writes it: the driver's candidates, objectives (FID, GFLOPs)."""
    config = SearchConfig(
        steps=4, n_widths=3, population=4, generations=1, mutation_rate=0.001, crossover="two_point"
    )
    driver = SearchDriver(config, seed=0)
    genomes = driver.ask()
    objectives: list[tuple[float, float] | None] = [(fid, g) for g, fid in fronts]
    objectives += [None] * (len(genomes) - len(objectives))
    driver.tell(genomes, objectives, reasons=[None if o else "out of memory" for o in objectives])
    return {
        "extractor": extractor,
        "candidates": [c.to_dict() for c in driver.candidates],
        "front": [c.to_dict() for c in driver.front()],
    }


def test_fronts_are_read_from_search_results_as_gflops_fid() -> None:
    res = _results([(1.0, 30.0), (4.0, 10.0), (3.0, 40.0)])  # the last is dominated
    front = front_from_results(res, "s")
    assert front.points == ((1.0, 30.0), (4.0, 10.0)) and front.extractor == "domain:digits-cnn-v1"
    # other shapes: explicit keys, a record, a failed entry, the front one level down
    other = {"result": {"front": [{"gflops": 2, "fid": 9}, {"record": {"gflops": 3.0, "fid": 7.0}},
                                  {"genome": [0], "objectives": None, "status": "failed"}]}}  # fmt: skip
    assert front_from_results(other, "o").points == ((2.0, 9.0), (3.0, 7.0))
    with pytest.raises(ConfigError, match="has no 'front' list"):
        front_from_results({"pick": {}}, "x", source="r.json")
    with pytest.raises(ConfigError, match="front entry 0 has neither"):
        front_from_results({"front": [[1, 2]]}, "x")
    assert Candidate.from_dict(res["front"][0]).cost == 1.0  # the orientation the reader assumes


def test_load_front_names_a_search_by_its_folder(tmp_path) -> None:
    (tmp_path / "cold").mkdir()
    (tmp_path / "cold" / "results.json").write_text(json.dumps(_results([(2.0, 5.0)])))
    assert load_front(tmp_path / "cold").name == "cold"
    assert load_front(tmp_path / "cold" / "results.json", "mine").name == "mine"
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="cannot read"):
        load_front(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_front(tmp_path / "nowhere.json")


def _two_searches(tmp_path):
    paths = []
    for name, pts in (("cold", [(1.0, 30.0), (4.0, 10.0)]), ("warm", [(2.0, 20.0), (8.0, 5.0)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results(pts)))
        paths.append(str(tmp_path / name / "results.json"))
    return paths


def test_cli_prints_a_table_writes_json_and_plots(tmp_path, capsys) -> None:
    paths = _two_searches(tmp_path)
    argv = ["compare", *paths, "--out", str(tmp_path / "fronts.png"), "--json", str(tmp_path / "c.json")]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    expected = compare_fronts([load_front(p) for p in paths])
    table = json.loads((tmp_path / "c.json").read_text())
    assert [r["name"] for r in table["searches"]] == ["cold", "warm"]
    assert [r["hypervolume"] for r in table["searches"]] == pytest.approx(
        [r.hypervolume for r in expected.rows]
    )
    assert table["reference"] == {"cost": pytest.approx(8.8), "fid": pytest.approx(33.0)}
    assert (table["axis"], table["unit"], table["note"]) == ("gflops", "GFLOPs/image", None)
    assert "reference point: 8.8000 GFLOPs, FID 33.0000" in out
    assert f"{expected.rows[0].hypervolume:.4f}" in out and "warm" in out
    assert (tmp_path / "fronts.png").read_bytes()[:8] == PNG_MAGIC
    # a given reference point and names
    code, out, err = run_cli(["compare", *paths, "--ref", "10,40", "--name", "A", "--name", "B"], capsys)
    assert code == 0, err
    assert "reference point: 10.0000 GFLOPs, FID 40.0000" in out and "\nA " in out and "\nB " in out


def test_cli_repeated_names_are_made_unique(tmp_path, capsys) -> None:
    path = _two_searches(tmp_path)[0]
    code, out, err = run_cli(["compare", path, path, "--json", str(tmp_path / "c.json")], capsys)
    assert code == 0, err
    assert [r["name"] for r in json.loads((tmp_path / "c.json").read_text())["searches"]] == [
        "cold",
        "cold#2",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["{tmp}/nowhere.json"], "does not exist"),
        (["{tmp}/bad.json"], "cannot read"),
        (["{tmp}/nofront.json"], "has no 'front' list"),
        (["{cold}", "--ref", "1;2"], "--ref: the reference point is 'COST,FID'"),
        (["{cold}", "--ref", "1,nan"], "two finite numbers"),
        (["{cold}", "--name", "a", "--name", "b"], "2 --name for 1 results"),
        (["{cold}", "{other}"], "different feature extractors"),
        (["{cold}", "--axis", "seconds"], "--axis: unknown axis 'seconds'; allowed: gflops, latency"),
        (["{cold}", "--axis", "latency"], "has no predicted ms/image (front entry 0): its search had no"),
        (["{cold}", "--out", "{tmp}/f.pdf"], "f.pdf' must end in .png (it is written as a PNG plot)"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_2(extra, message, tmp_path, capsys) -> None:
    cold = _two_searches(tmp_path)[0]
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "nofront.json").write_text(json.dumps({"pick": None}))
    (tmp_path / "other.json").write_text(json.dumps(_results([(1.0, 2.0)], extractor="inception")))
    subst = {"{cold}": cold, "{other}": str(tmp_path / "other.json")}
    argv = ["compare", *[subst.get(a, a.replace("{tmp}", str(tmp_path))) for a in extra]]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_compare_and_its_cli_need_no_torch(tmp_path) -> None:
    paths = _two_searches(tmp_path)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from ddsm_core.cli import app, run_app\n"
        f"assert run_app(app, ['compare', *{paths!r}, '--out', {str(tmp_path / 'f.png')!r}]) == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------ costs in other units than GFLOPs
CPU = {"device": "cpu: test", "dtype": "float32", "threads": 1}


def _costed(points: list[tuple[float, float, float]], objective: str, table: dict | None = CPU) -> dict:
    """results.json of a search with ``objective`` as ``ddsm search`` writes it: each front entry's
    record has GFLOPs and (with a latency ``table``) the predicted latency in seconds; the driver's
    objectives are (FID, the objective's cost: GFLOPs, or ms/image)."""
    front = []
    for k, (gflops, ms, fid) in enumerate(points):
        record = {"fid": fid, "gflops": gflops, **({"predicted_latency_s": ms / 1e3} if table else {})}
        cost = ms if objective == "latency" else gflops
        front.append({"genome": [k], "objectives": [fid, cost], "status": "ok", "reason": None,
                      "generation": 0, "index": k, "record": record})  # fmt: skip
    return {"config": {"objective": objective}, "extractor": "domain", "front": front, "latency_table": table}


def test_a_latency_search_is_read_and_compared_in_predicted_ms_per_image() -> None:
    # GFLOPs and time disagree: the 1-GFLOP point is the slowest
    res = _costed([(1.0, 9.0, 30.0), (3.0, 2.0, 20.0), (4.0, 4.0, 10.0)], "latency")
    assert objective_of(res) == "latency"
    own = front_from_results(res, "lat")
    assert (own.axis, own.objective, own.latency_source) == (
        "latency",
        "latency",
        "cpu: test, float32, 1 threads",
    )
    assert own.points == ((2.0, 20.0), (4.0, 10.0), (9.0, 30.0))  # ms/image, not GFLOPs
    assert front_from_results(res, "lat", axis="gflops").points == ((1.0, 30.0), (3.0, 20.0), (4.0, 10.0))
    cmp = compare_fronts([own])
    assert cmp.axis == "latency" and cmp.unit == "predicted ms/image"
    assert cmp.reference == pytest.approx((9.9, 33.0))  # 1.1 x the worst ms/image, not GFLOPs
    assert cmp.to_dict()["searches"][0]["min_cost"] == 2.0
    # a driver-only entry (no record) has its cost in the search's own unit, so no GFLOPs
    bare = {"config": {"objective": "latency"}, "front": [{"objectives": [5.0, 7.0]}]}
    assert front_from_results(bare, "b").points == ((7.0, 5.0),)
    with pytest.raises(ConfigError, match="no GFLOPs/image"):
        front_from_results(bare, "b", axis="gflops")


def test_the_axis_is_the_shared_objective_else_gflops_with_a_note() -> None:
    assert choose_axis([("a", "latency"), ("b", "latency")]) == ("latency", None)
    assert choose_axis([("a", "gflops")]) == ("gflops", None)
    axis, note = choose_axis([("a", "latency"), ("b", "gflops")])
    assert axis == "gflops" and "different costs (a: latency, b: gflops)" in note
    assert choose_axis([("a", "latency"), ("b", "gflops")], "latency") == ("latency", None)
    with pytest.raises(ConfigError, match="unknown axis"):
        choose_axis([("a", "gflops")], "ms")
    # fronts in different units, or latencies of different devices, are never put in one box
    lat = Front("lat", ((2.0, 1.0),), axis="latency", latency_source="cpu: a, float32")
    with pytest.raises(ConfigError, match="different units"):
        compare_fronts([lat, Front("g", ((2.0, 1.0),))])
    gpu = Front("gpu", ((0.1, 1.0),), axis="latency", latency_source="cuda: H100, float32")
    with pytest.raises(ConfigError, match="different latency tables"):
        compare_fronts([lat, gpu])


def _write(tmp_path, name: str, results: dict) -> str:
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(results))
    return str(tmp_path / name / "results.json")


def test_cli_compares_latency_searches_in_ms_and_mixed_objectives_in_gflops(tmp_path, capsys) -> None:
    lat = _write(tmp_path, "lat", _costed([(1.0, 9.0, 30.0), (3.0, 2.0, 20.0)], "latency"))
    lat2 = _write(tmp_path, "lat2", _costed([(2.0, 3.0, 25.0)], "latency"))
    flops = _write(tmp_path, "flops", _costed([(2.0, 5.0, 22.0)], "gflops"))  # with a table: both units
    bare = _write(tmp_path, "bare", _costed([(2.0, 5.0, 22.0)], "gflops", table=None))
    gpu = _write(
        tmp_path, "gpu", _costed([(2.0, 0.5, 22.0)], "latency", table={"device": "cuda: x", "dtype": "bf16"})
    )

    def table(*argv: str) -> tuple[dict, str]:
        code, out, err = run_cli(["compare", *argv, "--json", str(tmp_path / "c.json")], capsys)
        assert code == 0, err
        return json.loads((tmp_path / "c.json").read_text()), out

    body, out = table(lat, lat2)  # both latency: their own unit
    assert (body["axis"], body["unit"], body["note"]) == ("latency", "predicted ms/image", None)
    assert body["reference"] == {"cost": pytest.approx(9.9), "fid": pytest.approx(33.0)}
    assert "cost axis: predicted ms/image" in out and "min ms" in out and "reference point: 9.9000 ms" in out
    body, out = table(lat, bare)  # mixed objectives: GFLOPs, which both have, and a note saying so
    assert body["axis"] == "gflops" and body["reference"]["cost"] == pytest.approx(3.3)
    assert "note: the searches minimise different costs (lat: latency, bare: gflops)" in out
    assert [r["objective"] for r in body["searches"]] == ["latency", "gflops"]
    body, _ = table(lat, flops, "--axis", "latency")  # a GFLOPs search with a table has ms too
    assert body["axis"] == "latency" and body["reference"]["cost"] == pytest.approx(9.9)
    for argv, message in (([lat, bare, "--axis", "latency"], f"{bare} has no predicted ms/image"),
                          ([lat, gpu], "different latency tables are not comparable")):  # fmt: skip
        code, out, err = run_cli(["compare", *argv], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    code, _, err = run_cli(["compare", lat, "--out", str(tmp_path / "f.png")], capsys)
    assert code == 0 and (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
