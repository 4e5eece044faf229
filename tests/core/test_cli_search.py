"""ddsm ref-stats / eval / search end to end on a tiny untrained supernet (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddsm_core.cli import app, run_app

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from ddsm_core.checkpoint import write_checkpoint
    from ddsm_core.config import UNetConfig
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    cfg = UNetConfig.digits(model_channels=32, num_res_blocks=1, widths=(0.5, 0.75, 1.0))
    model = SlimmableUNet(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "c"
    write_checkpoint(
        path, step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
        model_state=model.state_dict(), train_config={"dataset": "digits"},
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory, checkpoint):
    """Reference stats with a tiny domain extractor cached in a temp folder."""
    import ddsm_core.features as features

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    tiny = features.DomainCNNConfig(width=8, feature_dim=16, epochs=1, batch_size=64)
    mp.setitem(features.DOMAIN_CONFIGS, "digits", tiny)
    mp.setenv("DDSM_CACHE_DIR", str(cache))
    out = tmp_path_factory.mktemp("stats") / "digits.npz"
    assert run_app(app, ["ref-stats", "--dataset", "digits", "--out", str(out)]) == 0
    yield out
    mp.undo()


def test_ref_stats_file_is_labelled(stats) -> None:
    with np.load(stats) as f:
        assert str(f["extractor"]) == "domain:digits-cnn-v1" and int(f["n"]) == 1500
        assert f["mu"].shape == (16,) and len(json.loads(str(f["meta"]))["extractor_weights"]) == 16


def test_ref_stats_record_the_real_data_floor(stats) -> None:
    from ddsm_core.fid import FeatureStats
    from ddsm_core.floor import floor_of, floors_of

    floors = floors_of(FeatureStats.load(stats))
    assert [(f.split, f.n_images) for f in floors] == [("test", 200), ("test", 297)]
    assert floors[0].fid > floors[1].fid > 0  # fewer images, more finite-sample bias
    assert floor_of(FeatureStats.load(stats), 500) == floors[1]


def test_eval_prints_fid_with_its_extractor(checkpoint, stats, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(stats), "--strategy", "uniform:6/8",
            "--steps", "3", "--images", "16", "--json", str(out)]  # fmt: skip
    assert run_app(app, argv) == 0
    text = capsys.readouterr().out
    assert "FID (domain:digits-cnn-v1)" in text and "real-data floor" in text and "(200 test images" in text
    assert json.loads(out.read_text())["n_images"] == 16
    assert json.loads(out.read_text())["floor"]["n_images"] == 200


def test_stats_of_another_dimension_fail_before_sampling(checkpoint, tmp_path, capsys) -> None:
    np.savez(tmp_path / "inc.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(tmp_path / "inc.npz"),
            "--extractor", "domain", "--dataset", "digits", "--steps", "2", "--images", "100000"]  # fmt: skip
    assert run_app(app, argv) == 2  # 100000 images would take minutes: the error comes first
    assert "inception-v3-pool3" in capsys.readouterr().err


def test_search_writes_the_report_folder_and_resumes(checkpoint, stats, tmp_path) -> None:
    out = tmp_path / "search"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--steps", "3", "--population", "6", "--generations", "2", "--images", "12",
            "--final-images", "16", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    for name in ("results.json", "pareto.png", "strategy.png", "samples.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert {"config", "candidates", "front", "pick", "final", "uniform", "cost"} <= set(res)
    assert res["extractor"] == "domain:digits-cnn-v1" and len(res["uniform"]) == 3
    assert res["final"]["pick"]["n_images"] == 16 and res["final"]["full"]["genome"] == [2, 2, 2]
    # every FID next to the real-data floor, every finalist paired with full width on the same seeds
    assert [f["n_images"] for f in res["floors"]] == [200, 297]
    pick = res["paired"]["pick"]
    assert pick["fid_a"] == pytest.approx(res["final"]["full"]["fid"])
    assert pick["fid_b"] == pytest.approx(res["final"]["pick"]["fid"])
    assert pick["low"] <= pick["diff"] <= pick["high"] or pick["diff"] == 0
    assert pick["equal_quality"] == (pick["high"] <= 0.05 * res["final"]["full"]["fid"])
    report = (out / "report.md").read_text()
    assert "x floor)" in report and "Real-data floor" in report and "Paired with full width" in report
    assert run_app(app, argv) == 0  # resumes from the finished state: nothing is evaluated again
    again = json.loads((out / "results.json").read_text())
    assert again["run"]["resumed"] and again["candidates"] == res["candidates"]
    assert (again["front"], again["pick"], again["knee"]) == (res["front"], res["pick"], res["knee"])


def test_the_report_folder_strategies_work_as_is_with_sample_and_eval(
    checkpoint, stats, tmp_path, capsys
) -> None:
    out = tmp_path / "search"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--sampler", "dpm-solver++", "--steps", "3", "--population", "6", "--generations", "1",
            "--images", "8", "--final-images", "8", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    res = json.loads((out / "results.json").read_text())
    for name in ("pick", "knee", "full"):
        strategy = json.loads((out / f"{name}.json").read_text())
        assert strategy["genes"] == res["final"][name]["genome"]
        assert (strategy["sampler"], strategy["steps"]) == ("dpmpp", 3)  # canonical spelling
    capsys.readouterr()
    # no --sampler / --steps: both come from the file (the shared default would be ddpm/20)
    grid = tmp_path / "pick.png"
    argv = ["sample", "--checkpoint", str(checkpoint), "--strategy", str(out / "pick.json"), "--n", "2",
            "--out", str(grid), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    assert grid.stat().st_size > 0 and "dpmpp/3" in capsys.readouterr().out
    # a report's results.json stands for its pick
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(stats), "--images", "4",
            "--strategy", str(out / "results.json"), "--json", str(tmp_path / "e.json")]  # fmt: skip
    assert run_app(app, argv) == 0
    assert json.loads((tmp_path / "e.json").read_text())["strategy"] == res["final"]["pick"]["strategy"]
    # an explicit sampler must agree with the file's (aliases accepted)
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(stats), "--images", "4",
            "--strategy", str(out / "knee.json"), "--sampler", "dpmpp", "--steps", "3"]  # fmt: skip
    assert run_app(app, argv) == 0
    assert run_app(app, [*argv[:-4], "--sampler", "ddim"]) == 2
    assert "leave out --sampler/--steps" in capsys.readouterr().err


def test_search_profiles_set_the_defaults_and_options_override_them() -> None:
    from ddsm_core.errors import ConfigError
    from ddsm_core.spec import DEFAULTS, SearchSpec, profile

    paper = profile("paper")
    assert (paper.population, paper.generations, paper.n_images, paper.mutation_rate) == (50, 10, 4096, 0.001)
    cpu = (DEFAULTS.population, DEFAULTS.generations, DEFAULTS.n_images, DEFAULTS.weight)
    assert cpu == (16, 5, 200, 1.5) and (DEFAULTS.sampler, DEFAULTS.steps) == ("ddpm", 20)
    assert paper.replace(population=None, weight=0.5).weight == 0.5 and paper.replace(weight=None) == paper
    spec = paper.bind((0.5, 1.0))
    assert SearchSpec.from_json(spec.to_json()) == spec and spec.strategy([0, 1] * 10).sampler == "ddpm"
    with pytest.raises(ConfigError, match="allowed: cpu, paper"):
        profile("gpu")
    with pytest.raises(ConfigError, match="population must be in"):
        SearchSpec(population=1)
    with pytest.raises(ConfigError, match="unknown sampler"):
        SearchSpec(sampler="euler")


def test_a_warm_started_search_seeds_its_first_generation(checkpoint, stats, tmp_path, capsys) -> None:
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.strategy import Strategy
    from ddsm_core.transfer import transfer_strategy

    widths = (0.5, 0.75, 1.0)
    same = Strategy("ddim", 3, widths, (1, 0, 2))  # on the search's grid: taken as is
    other = Strategy("ddpm", 8, widths, (0, 0, 0, 1, 1, 1, 2, 2))  # transferred to ddim/3
    expected = transfer_strategy(other, "ddim", 3, NoiseSchedule.linear().to_dict()).genes
    assert expected != same.genes and len(set(expected)) > 1  # a distinct, non-uniform seed
    (tmp_path / "a.json").write_text(same.to_json())
    (tmp_path / "b.json").write_text(other.to_json())
    out = tmp_path / "warm"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--sampler", "ddim", "--steps", "3", "--population", "6", "--generations", "1",
            "--images", "8", "--final-images", "8", "--no-progress",
            "--warm-start", str(tmp_path / "a.json"), "--warm-start", str(tmp_path / "b.json")]  # fmt: skip
    assert run_app(app, argv) == 0
    assert "2 seed(s) in the first generation" in capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    first = [tuple(c["genome"]) for c in res["candidates"] if c["generation"] == 1]
    assert {(0, 0, 0), (1, 1, 1), (2, 2, 2), (1, 0, 2), tuple(expected)} <= set(first)
    assert res["config"]["initial"] == [[1, 0, 2], list(expected)]
    # resuming without --warm-start keeps the stored seeds (the state's configuration matches)
    assert run_app(app, argv[:-4]) == 0
    assert "resuming with the 2 seed(s)" in capsys.readouterr().err
    # the search's own results.json seeds another search (its pick first)
    argv2 = [*argv[:6], str(tmp_path / "warm2"), *argv[7:-4], "--warm-start", str(out / "results.json")]
    assert run_app(app, argv2) == 0
    res2 = json.loads((tmp_path / "warm2" / "results.json").read_text())
    pick = res["pick"]["genome"]
    assert len(set(pick)) == 1 or res2["config"]["initial"][0] == pick


def test_a_bad_warm_start_file_is_a_one_line_error(checkpoint, stats, tmp_path, capsys) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    base = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(tmp_path / "s"),
            "--steps", "3", "--population", "6", "--generations", "1", "--images", "8",
            "--no-progress"]  # fmt: skip
    bad = ((tmp_path / "bad.json", "not valid JSON"), (tmp_path / "no.json", "--warm-start: strategy file"))
    for path, message in bad:
        capsys.readouterr()
        assert run_app(app, [*base, "--warm-start", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s" / "search_state.json").exists()


def test_search_with_rungs_stops_most_candidates_early_and_counts_each_rung(
    checkpoint, stats, tmp_path, capsys
) -> None:
    out = tmp_path / "mf"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--steps", "3", "--population", "6", "--generations", "2", "--images", "16",
            "--final-images", "16", "--rungs", "4,8", "--promote", "0.5", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["rungs"] == [4, 8] and res["config"]["promote"] == 0.5
    rungs = res["cost"]["rungs"]
    assert [r["n_images"] for r in rungs] == [4, 8, 16]
    assert rungs[0]["evaluations"] == len(res["candidates"]) > rungs[2]["evaluations"] >= 1
    assert all(c["record"]["fidelity"]["top"] and c["record"]["n_images"] == 16 for c in res["front"])
    assert f"evaluations: {rungs[0]['evaluations']} at 4," in (out / "report.md").read_text()
    # a top-rung value is the plain FID on the first 16 seeds: the same as `ddsm eval` gives (the
    # weighted pick is a front member; the tolerance pick may be full width, stopped at a low rung)
    pick = res["weighted_pick"]
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(stats), "--steps", "3", "--images",
            "16", "--strategy", str(out / "weighted.json"), "--json", str(tmp_path / "e.json")]  # fmt: skip
    assert run_app(app, argv) == 0
    assert json.loads((tmp_path / "e.json").read_text())["fid"] == pytest.approx(pick["objectives"][0])
    capsys.readouterr()
    bad = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(tmp_path / "b"),
           "--images", "16", "--rungs", "8,32"]  # fmt: skip
    assert run_app(app, bad) == 2
    assert "rungs must be increasing" in capsys.readouterr().err
    assert run_app(app, [*bad[:-1], "8,x"]) == 2
    assert "--rungs takes comma-separated" in capsys.readouterr().err


def _slow_narrow_table(widths, device: str):
    """A latency table where the narrowest width is 1000x slower than the others: the latency
    objective must steer away from it while GFLOPs favour it."""
    from ddsm_core.latency import LatencyTable

    seconds = [(1.0, 1.0) if i == 0 else (0.001 * i, 0.001 * i) for i in range(len(widths))]
    return LatencyTable(device=device, dtype="float32", threads=1, widths=widths, batch_sizes=(1, 8),
                        seconds=seconds, overhead={"ddpm": (0.0001, 0.0002)})  # fmt: skip


def test_objective_latency_picks_by_the_tables_predicted_time(checkpoint, stats, tmp_path, capsys) -> None:
    import shutil

    from ddsm_core.latency import LatencyTable, device_name, table_filename

    own = tmp_path / "ckpt"  # a copy: the table written next to it must not reach the other tests
    shutil.copytree(checkpoint, own)
    widths = (0.5, 0.75, 1.0)
    table = _slow_narrow_table(widths, device_name("cpu"))
    table.save(own / table_filename(table.device, "float32"))
    base = ["search", "--checkpoint", str(own), "--stats", str(stats), "--steps", "3", "--population", "4",
            "--generations", "1", "--images", "8", "--final-images", "8", "--batch-size", "8",
            "--weight", "1000000", "--pick-rule", "weighted", "--no-progress"]  # fmt: skip
    # GFLOPs (the default): with a huge weight the pick is the cheapest: uniform 1/2; the table found
    # in the checkpoint folder still gives every finalist its predicted latency
    assert run_app(app, [*base, "--out", str(tmp_path / "g")]) == 0, capsys.readouterr().err
    g = json.loads((tmp_path / "g" / "results.json").read_text())
    assert g["config"]["objective"] == "gflops" and g["final"]["pick"]["genome"] == [0, 0, 0]
    assert g["final"]["pick"]["predicted_latency_s"] == pytest.approx(
        (3 * 1.0 + 3 * 0.0002) / 8
    )  # batch 8: three calls of 1 s and three sampler steps of 0.2 ms, per image
    assert g["latency_table"]["device"] == table.device and g["latency_saving"] < 0
    # latency: the narrow width is the slowest, so the cheapest (and the pick) is uniform 3/4
    assert run_app(app, [*base, "--out", str(tmp_path / "l"), "--objective", "latency"]) == 0
    lat = json.loads((tmp_path / "l" / "results.json").read_text())
    assert lat["config"]["objective"] == "latency" and lat["final"]["pick"]["genome"] == [1, 1, 1]
    assert lat["pick"]["objectives"][1] == pytest.approx(1e3 * (3 * 0.001 + 3 * 0.0002) / 8)
    assert lat["final"]["pick"]["gflops"] < lat["final"]["full"]["gflops"]  # both shown
    report = (tmp_path / "l" / "report.md").read_text()
    assert "predicted ms/image" in report and "x predicted ms/image" in report and table.device in report
    # a search resumed with another objective (or table) would mix costs: refused
    capsys.readouterr()
    assert run_app(app, [*base, "--out", str(tmp_path / "l")]) == 2
    assert "minimised another cost" in capsys.readouterr().err
    assert run_app(app, [*base, "--out", str(tmp_path / "l"), "--objective", "latency"]) == 0  # same: fine
    # an explicit --latency-table wins over the one in the folder; a bad one is a one-line error
    other = LatencyTable.from_dict({**table.to_dict(), "widths": [0.5, 1.0], "seconds": [[1, 1], [2, 2]]})
    other.save(tmp_path / "two.json")
    capsys.readouterr()
    argv = [*base, "--out", str(tmp_path / "x"), "--objective", "latency", "--latency-table",
            str(tmp_path / "two.json")]  # fmt: skip
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert "[0.75]" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_objective_latency_without_a_table_is_a_one_line_error(checkpoint, stats, tmp_path, capsys) -> None:
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(tmp_path / "s"),
            "--objective", "latency", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert "ddsm latency --checkpoint" in err and err.count("\n") == 1
    assert run_app(app, [*argv[:-3], "--objective", "seconds"]) == 2
    assert "gflops, latency" in capsys.readouterr().err


def test_a_bad_pick_rule_or_tolerance_is_a_one_line_error(checkpoint, stats, tmp_path, capsys) -> None:
    base = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(tmp_path / "s"),
            "--no-progress"]  # fmt: skip
    bad = (
        (["--pick-rule", "best"], "--pick-rule 'best'; allowed: tolerance, weighted"),
        (["--tolerance", "-0.1"], "--tolerance must be in [0, 10]"),
        (["--tolerance", "nan"], "--tolerance must be in [0, 10]"),
        (["--tolerance", "11"], "--tolerance must be in [0, 10]"),
        (["--final-seed", "-1"], "--final-seed must be in [0, 4294967295]"),
        (["--final-seed", "4294967000"], "--final-seed + --final-images - 1 must be <= 4294967295"),
    )
    for options, message in bad:
        capsys.readouterr()
        assert run_app(app, [*base, *options]) == 2, options
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()  # checked before any work


def _final_calls(monkeypatch: pytest.MonkeyPatch, n_images: int) -> list[tuple[int, ...]]:
    """The genomes the search's evaluator measures as finalists (``n_images`` each)."""
    from ddsm_core.evaluate import GenomeEvaluator

    calls: list[tuple[int, ...]] = []
    real = GenomeEvaluator.evaluate_final

    def counted(self, genome):  # type: ignore[no-untyped-def]
        assert self.spec.final_images == n_images
        calls.append(tuple(genome))
        return real(self, genome)

    monkeypatch.setattr(GenomeEvaluator, "evaluate_final", counted)
    return calls


def test_the_tolerance_pick_bisects_the_front_and_resumes_without_redoing_its_probes(
    checkpoint, stats, tmp_path, monkeypatch
) -> None:
    import ddsm_core.pick as pick_module
    from ddsm_core.cli.search_cmd import FINALS_DIR, search_to_folder
    from ddsm_core.pick import bisect_front, bisection_members
    from ddsm_core.search import Candidate
    from ddsm_core.spec import SearchSpec

    spec = SearchSpec(steps=3, population=6, generations=2, n_images=12, final_images=16, tolerance=2.0)
    calls = _final_calls(monkeypatch, 16)
    res = search_to_folder(checkpoint, tmp_path / "a", spec, stats=stats, progress=False, n_sample_images=4)
    assert res["pick_rule"] == "tolerance" and res["config"]["tolerance"] == 2.0
    bis, final, full = res["bisection"], res["final"], res["final"]["full"]
    assert bis["rel_tolerance"] == 2.0 and bis["tolerance"] == pytest.approx(2.0 * full["fid"])
    assert (
        final["weighted"]["genome"] == res["weighted_pick"]["genome"]
        and "weighted" in res["paired"]
        or (final["weighted"]["genome"] == full["genome"])
    )
    # the probes are bisection's over the front cheapest first, each decided by its paired interval
    members = bisection_members([Candidate.from_dict(c) for c in res["front"]], tuple(full["genome"]))
    assert bis["probes"] and bis["members"] == len(members)
    verdicts = {}
    for probe in bis["probes"]:
        d = probe["paired"]
        assert d["n_images"] == 16 and probe["equal_quality"] == (d["high"] <= bis["tolerance"])
        verdicts[tuple(probe["genome"])] = probe["equal_quality"]
    step = bisect_front(members, tuple(full["genome"]), verdicts)
    assert step.done and [list(g) for g in step.probes] == [p["genome"] for p in bis["probes"]]
    assert bis["pick"] == list(step.pick) == final["pick"]["genome"] == res["pick"]["genome"]
    # every genome measured once at the finalists' count: the finalists, then one per probe
    measured = {tuple(f["genome"]) for f in final.values()} | {tuple(p["genome"]) for p in bis["probes"]}
    assert len(calls) == len(set(calls)) == len(measured)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "Bisection over the front" in report and "weighted pick" in report
    assert (tmp_path / "a" / "weighted.json").is_file() and not (tmp_path / "a" / FINALS_DIR).exists()

    # interrupted while deciding the first probe: no results.json, the measured finalists are kept
    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(pick_module, "probe_verdict", interrupted)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        search_to_folder(checkpoint, tmp_path / "b", spec, stats=stats, progress=False, n_sample_images=4)
    assert not (tmp_path / "b" / "results.json").exists()
    measured = set(calls)
    assert len(list((tmp_path / "b" / FINALS_DIR).glob("*.npz"))) == len(measured) > 0
    monkeypatch.undo()
    calls = _final_calls(monkeypatch, 16)
    again = search_to_folder(checkpoint, tmp_path / "b", spec, stats=stats, progress=False, n_sample_images=4)
    assert not set(calls) & set(measured)  # read back, features included: nothing measured twice
    assert again["run"]["resumed"] and again["bisection"] == bis and again["paired"] == res["paired"]
    assert again["final"] == res["final"] or all(
        again["final"][k]["fid"] == pytest.approx(res["final"][k]["fid"]) for k in res["final"]
    )


def test_the_finalists_verdict_comes_from_seeds_the_search_never_ranked_on(
    checkpoint, stats, tmp_path, monkeypatch, capsys
) -> None:
    """Winner's curse: the front is chosen on seeds eval_seed..eval_seed + n_images - 1, so by default
    the finalists (and the bisection's probes, and samples.png) are sampled from the seeds after them.
    Every seed list the sampler is given is one set or the other, never a mix; full width's finalist
    FID is a direct evaluation on the held-out seeds; ``--final-seed`` at eval_seed (how searches were
    measured before) re-reads the search's own images, with a warning."""
    import ddsm_core.evaluate as evaluate_module
    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.cli.search_cmd import search_to_folder
    from ddsm_core.features import get_extractor
    from ddsm_core.fid import FeatureStats
    from ddsm_core.spec import SearchSpec

    spec = SearchSpec(steps=3, population=4, generations=1, n_images=8, final_images=8, eval_seed=10,
                      batch_size=4, tolerance=2.0)  # fmt: skip
    sampled: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    real = evaluate_module.sample_images

    def spy(model, schedule, strategy, seeds, *args, **kwargs):  # type: ignore[no-untyped-def]
        sampled.append((strategy.genes, tuple(seeds)))
        return real(model, schedule, strategy, seeds, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "sample_images", spy)
    res = search_to_folder(checkpoint, tmp_path / "a", spec, stats=stats, progress=False, n_sample_images=4)
    assert res["seeds"] == {"search": [10, 17], "final": [18, 25], "held_out": True}
    search, final = set(range(10, 18)), set(range(18, 26))
    assert all(set(seeds) <= search or set(seeds) <= final for _, seeds in sampled), sampled
    on_final = {genes for genes, seeds in sampled if set(seeds) <= final}
    on_search = {genes for genes, seeds in sampled if set(seeds) <= search}
    finalists = {tuple(f["genome"]) for f in res["final"].values()}
    probes = {tuple(p["genome"]) for p in res["bisection"]["probes"]}
    assert finalists | probes <= on_final and len(on_search) == spec.population
    assert all(f["n_images"] == 8 for f in res["final"].values())
    assert "seeds 18..25, held out: the search ranked on 10..17" in (tmp_path / "a" / "report.md").read_text()
    assert "warning" not in capsys.readouterr().err
    # full width's finalist FID is an evaluation on seeds 18..25; the search's full width read 10..17
    monkeypatch.undo()
    model, schedule, _ = load_checkpoint(checkpoint)
    ref = FeatureStats.load(stats)
    ext = get_extractor(ref.extractor, dataset="digits")
    full = spec.bind(model.config.widths).strategy(res["final"]["full"]["genome"])
    direct = evaluate_module.evaluate(model, schedule, full, ref, ext, 8, 18, 4)
    assert res["final"]["full"]["fid"] == pytest.approx(direct.fid, rel=1e-9)
    assert res["uniform"]["8/8"]["fid"] != pytest.approx(direct.fid, rel=1e-6)
    # pinned at eval_seed: the verdict re-reads the search's images (full width's FID is the search's)
    old = search_to_folder(checkpoint, tmp_path / "b", spec.replace(final_seed=10), stats=stats,
                           progress=False, n_sample_images=4)  # fmt: skip
    assert old["seeds"] == {"search": [10, 17], "final": [10, 17], "held_out": False}
    assert old["final"]["full"]["fid"] == pytest.approx(old["uniform"]["8/8"]["fid"], rel=1e-9)
    assert "overlap the search's 10..17" in capsys.readouterr().err
    assert "overlapping the search's 10..17" in (tmp_path / "b" / "report.md").read_text()


def test_old_results_without_a_pick_rule_still_render_and_seed(checkpoint, stats, tmp_path) -> None:
    """results.json from before the pick rule (no pick_rule, bisection, weighted_pick, final.weighted):
    the report is rendered again, and it still seeds a warm start / transfer (outputs are inputs)."""
    from ddsm_core.report import write_report_folder
    from ddsm_core.transfer import read_strategies

    out = tmp_path / "new"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--steps", "3", "--population", "4", "--generations", "1", "--images", "8",
            "--final-images", "8", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    old = json.loads((out / "results.json").read_text())
    for key in ("pick_rule", "bisection", "weighted_pick"):
        old.pop(key)
    old["final"].pop("weighted")
    old["paired"].pop("weighted", None)
    for key in ("pick_rule", "tolerance", "final_seed"):
        old["config"].pop(key)
    old.pop("seeds")  # (from before held-out finalist seeds: they were the search's, from eval_seed)
    old["pick"] = old["knee"]  # (any front member)
    write_report_folder(tmp_path / "old", old)
    report = (tmp_path / "old" / "report.md").read_text()
    assert "pick = argmin FID" in report and "Bisection" not in report
    assert "seeds 0..7, overlapping the search's 0..7" in report
    assert read_strategies(tmp_path / "old" / "results.json")[0][0] == "pick"
    warm_argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out",
                   str(tmp_path / "warm"), "--steps", "3", "--population", "4", "--generations", "1",
                   "--images", "8", "--final-images", "8", "--no-progress", "--pick-rule", "weighted",
                   "--warm-start", str(tmp_path / "old" / "results.json")]  # fmt: skip
    assert run_app(app, warm_argv) == 0
    warm = json.loads((tmp_path / "warm" / "results.json").read_text())
    assert warm["pick_rule"] == "weighted" and warm["bisection"] is None and "weighted" not in warm["final"]
    assert warm["pick"] == warm["weighted_pick"]
