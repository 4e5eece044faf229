"""Strategy transfer by log-SNR: grids, identity, monotonicity, shares, JSON, ``ddsm strategy transfer``."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import Strategy
from ddsm_core.transfer import (
    read_strategies,
    respaced_timesteps,
    schedule_sigmas,
    step_log_snr,
    step_sigmas,
    transfer_strategy,
    width_share,
)
from tests.support import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GRIDS = [("ddpm", 20), ("ddim", 50), ("ddim", 7), ("edm", 10), ("edm", 26), ("dpmpp", 10), ("dpmpp", 31)]


# ---------------------------------------------------------------------------------------- grids
@pytest.mark.parametrize(
    "schedule", [NoiseSchedule.linear(), NoiseSchedule.cosine(), NoiseSchedule.linear(100)]
)
def test_numpy_grids_are_the_samplers_grids(schedule) -> None:
    from ddsm_core import sampling

    assert np.allclose(schedule_sigmas(schedule.to_dict()), schedule.sigmas.numpy(), rtol=1e-13, atol=0)
    for sampler, steps in [("edm", n) for n in (1, 2, 10, 26)] + [("dpmpp", n) for n in (1, 2, 10, 31)]:
        ours = step_sigmas(sampler, steps, schedule.to_dict())
        theirs = sampling.get_sigmas(sampler, schedule, steps)[:-1].numpy()
        assert np.allclose(ours, theirs, rtol=1e-12, atol=0), (sampler, steps)
    for steps in (1, 2, 10, 20, 50):  # no rounding ties at these counts: the same timesteps exactly
        theirs = sampling.get_sigmas("ddpm", schedule, steps)[:-1].numpy()
        assert np.allclose(step_sigmas("ddim", steps, schedule), theirs, rtol=1e-12, atol=0), steps


def test_respaced_timesteps_differ_from_the_float_ones_only_at_exact_ties() -> None:
    from ddsm_core.sampling import respaced_timesteps as float_timesteps

    T = 1000
    for steps in range(2, T + 1):
        ours, theirs = respaced_timesteps(T, steps), float_timesteps(T, steps).numpy()
        twice = 2 * (T - 1) * (steps - 1 - np.arange(steps))  # 2 x the exact value, times (steps - 1)
        tie = (twice % (steps - 1) == 0) & ((twice // (steps - 1)) % 2 == 1)
        assert np.all(np.abs(ours - theirs) <= 1) and np.all((ours == theirs) | tie), steps
        assert ours[0] == T - 1 and ours[-1] == 0 and np.all(np.diff(ours) < 0)


def test_every_grid_spans_the_same_log_snr_range_in_increasing_order() -> None:
    lam = {g: step_log_snr(*g) for g in GRIDS}
    for g, values in lam.items():
        assert np.all(np.diff(values) > 0), g
        assert values[0] == pytest.approx(lam[GRIDS[0]][0]) and values[-1] == pytest.approx(lam[GRIDS[0]][-1])


# ---------------------------------------------------------------------------------------- the rule
def _random_strategy(rng: np.random.Generator, sampler: str, steps: int, monotone: int = 0) -> Strategy:
    genes = rng.integers(0, 7, size=steps)
    if monotone:
        genes = np.sort(genes)[::monotone]
    return Strategy(
        sampler, steps, (2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0), tuple(int(g) for g in genes)
    )


@pytest.mark.parametrize(("sampler", "steps"), GRIDS + [("ddpm", 1), ("edm", 2)])
def test_transfer_to_the_same_sampler_and_steps_is_the_identity(sampler, steps) -> None:
    rng = np.random.default_rng(steps)
    for _ in range(20):
        s = _random_strategy(rng, sampler, steps)
        assert transfer_strategy(s, sampler, steps) == s
        assert transfer_strategy(s, sampler, steps, NoiseSchedule.cosine()) == s


def test_transfer_by_hand_on_grids_uniform_in_log_snr() -> None:
    # DPM-Solver++ steps sit uniformly in log-SNR: with the range scaled to [0, 1], 2 steps at 0 and 1
    # (cells [0, 1/2], [1/2, 1]); 4 steps at 0, 1/3, 2/3, 1 (cells cut at 1/6, 1/2, 5/6): each target
    # cell lies in one source cell. 3 steps at 0, 1/2, 1: the middle cell [1/4, 3/4] is split evenly,
    # and a tie goes to the wider width.
    src = Strategy("dpmpp", 2, (0.5, 1.0), (0, 1))
    assert transfer_strategy(src, "dpmpp", 4).genes == (0, 0, 1, 1)
    assert transfer_strategy(src, "dpmpp", 3).genes == (0, 1, 1)
    assert transfer_strategy(Strategy("dpmpp", 2, (0.5, 1.0), (1, 0)), "dpmpp", 3).genes == (1, 1, 0)
    assert transfer_strategy(src, "dpmpp", 1).genes == (1,)  # one step owns the range: a tie, the wider


def test_uniform_strategies_stay_uniform_and_other_width_sets_are_kept() -> None:
    s = Strategy.uniform("ddpm", 20, 1, (0.25, 0.5, 1.0))
    for sampler, steps in GRIDS:
        t = transfer_strategy(s, sampler, steps)
        assert t == Strategy.uniform(sampler, steps, 1, (0.25, 0.5, 1.0))


@pytest.mark.parametrize("direction", [1, -1])
def test_a_monotone_strategy_stays_monotone(direction) -> None:
    rng = np.random.default_rng(7)
    for a, b in itertools.permutations(GRIDS, 2):
        for _ in range(5):
            s = _random_strategy(rng, *a, monotone=direction)
            genes = np.asarray(transfer_strategy(s, *b).genes)
            assert np.all(direction * np.diff(genes) >= 0), (a, b, s.genes, genes)


def test_the_share_of_log_snr_at_each_width_is_kept_within_one_target_cell_per_switch() -> None:
    rng = np.random.default_rng(3)
    for a, b in itertools.permutations(GRIDS, 2):
        lam = step_log_snr(*b)
        cut = np.concatenate([[lam[0]], (lam[1:] + lam[:-1]) / 2, [lam[-1]]])
        cell = np.diff(cut).max() / (lam[-1] - lam[0])  # the largest target cell, as a share
        for _ in range(5):
            s = _random_strategy(rng, *a, monotone=1)
            before, after = width_share(s), width_share(transfer_strategy(s, *b))
            assert sum(after.values()) == pytest.approx(1.0)
            for w in s.widths:  # a width has at most two switches (in and out), each off by < one cell
                assert abs(before[w] - after[w]) <= 2 * cell + 1e-9, (a, b, w)


@pytest.mark.parametrize(("sampler", "src", "dst"), [("ddim", 20, 50), ("ddpm", 50, 10), ("edm", 10, 25)])
def test_the_same_sampler_at_another_step_count_keeps_the_share_of_steps(sampler, src, dst) -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        s = _random_strategy(rng, sampler, src, monotone=1)
        t = transfer_strategy(s, sampler, dst)
        for k in range(len(s.widths)):
            before, after = s.genes.count(k) / src, t.genes.count(k) / dst
            assert abs(before - after) <= 2 / src + 2 / dst, (s.genes, t.genes, k)


def test_transfer_round_trips_through_json() -> None:
    s = Strategy.piecewise("ddpm", 20, [1, 3, 6], [0.3, 0.6])
    t = transfer_strategy(s, "dpm-solver++", 10)
    assert Strategy.from_json(t.to_json()) == t and t.sampler == "dpmpp" and t.steps == 10


def test_transfer_rejects_what_the_target_cannot_run() -> None:
    s = Strategy.uniform("ddpm", 20, -1)
    with pytest.raises(StrategyError, match="unknown sampler 'euler'"):
        transfer_strategy(s, "euler", 10)
    with pytest.raises(StrategyError, match=r"runs 1\.\.1000 steps"):
        transfer_strategy(s, "ddim", 1001)
    with pytest.raises(StrategyError, match="steps must be an integer >= 1"):
        transfer_strategy(s, "edm", 0)


def test_transfer_and_its_cli_need_no_torch(tmp_path) -> None:
    src = tmp_path / "s.json"
    src.write_text(Strategy.piecewise("ddpm", 20, [0, 6]).to_json())
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from ddsm_core.cli import app, run_app\n"
        f"args = ['strategy', 'transfer', '--strategy', {str(src)!r}, '--sampler', 'edm', '--steps', '9',"
        f" '--out', {str(tmp_path / 'o.json')!r}]\n"
        "assert run_app(app, args) == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert Strategy.from_json((tmp_path / "o.json").read_text()).steps == 9


# ---------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) tiny supernet with a cosine schedule: sampling needs weights, not good ones."""
    import torch

    from ddsm_core import checkpoint as ck
    from ddsm_core.config import UNetConfig
    from ddsm_core.unet import SlimmableUNet

    config = UNetConfig.digits(model_channels=16, num_res_blocks=1, widths=(0.5, 0.75, 1.0))
    gen = torch.Generator().manual_seed(0)
    model = SlimmableUNet(config)
    state = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "c"
    ck.write_checkpoint(
        path, step=1, model_config=config, schedule=NoiseSchedule.cosine(200).to_dict(), model_state=state,
        ema_state=state, train_config={"dataset": "digits"},
    )  # fmt: skip
    return path


def test_cli_transfers_plots_and_the_file_samples(checkpoint, tmp_path, capsys) -> None:
    src = tmp_path / "ddpm20.json"
    source = Strategy.piecewise("ddpm", 20, [0, 1, 2], [0.3, 0.6], widths=(0.5, 0.75, 1.0))
    src.write_text(source.to_json())
    out, png = tmp_path / "dpm10.json", tmp_path / "transfer.png"
    argv = ["strategy", "transfer", "--strategy", str(src), "--sampler", "dpm-solver++", "--steps", "10"]
    code, stdout, err = run_cli(
        [*argv, "--out", str(out), "--plot", str(png), "--checkpoint", str(checkpoint)], capsys
    )
    assert code == 0, err
    got = Strategy.from_json(out.read_text())
    assert got == transfer_strategy(
        source, "dpmpp", 10, NoiseSchedule.cosine(200)
    )  # the checkpoint's schedule
    assert got != transfer_strategy(source, "dpmpp", 10)  # ... which is not the default one here
    assert "ddpm/20: 4/8x6 6/8x6 8/8x8" in stdout and str(out) in stdout
    assert png.read_bytes()[:8] == PNG_MAGIC
    argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", "dpm-solver++", "--steps", "10"]
    argv += ["--strategy", str(out), "--n", "2", "--out", str(tmp_path / "s.png"), "--no-progress"]
    argv += ["--npz", str(tmp_path / "s.npz")]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert got.describe() in stdout and np.load(tmp_path / "s.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_cli_transferred_file_is_evaluated(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    import ddsm_core.features as features

    monkeypatch.setitem(
        features.DOMAIN_CONFIGS,
        "digits",
        features.DomainCNNConfig(width=8, feature_dim=16, epochs=1, batch_size=64),
    )
    monkeypatch.setenv("DDSM_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "s.json"
    src.write_text(Strategy.piecewise("ddpm", 20, [0, 2], widths=(0.5, 0.75, 1.0)).to_json())
    out = tmp_path / "edm5.json"
    argv = ["strategy", "transfer", "--strategy", str(src), "--sampler", "edm-heun", "--steps", "5"]
    assert run_cli([*argv, "--out", str(out), "--schedule", "cosine", "--timesteps", "200"], capsys)[0] == 0
    argv = ["eval", "--checkpoint", str(checkpoint), "--dataset", "digits", "--strategy", str(out)]
    argv += ["--sampler", "edm", "--steps", "5", "--images", "8", "--json", str(tmp_path / "r.json")]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["n_images"] == 8 and record["network_calls"] == 9  # Heun: 2 x 5 - 1 calls


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "missing.json"], "strategy file 'missing.json' not found"),
        (["--strategy", "{bad}"], "strategy is not valid JSON"),
        (["--strategy", "{ok}", "--sampler", "euler"], "unknown sampler 'euler'"),
        (["--strategy", "{ok}", "--steps", "0"], "--steps must be in [2, 1000], got 0"),
        (["--strategy", "{ok}", "--sampler", "ddim", "--steps", "1001"], "in [2, 1000], got 1001"),
        (["--strategy", "{ok}", "--schedule", "sigmoid"], "unknown noise schedule 'sigmoid'"),
        (["--strategy", "{ok}", "--schedule", "linear", "--checkpoint", "{ckpt}"], "not both"),
        (["--strategy", "{ok}", "--checkpoint", "{ckpt}"], "the checkpoint offers"),
        (["--strategy", "{ok}", "--checkpoint", "{nockpt}"], "checkpoint"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_2(extra, message, checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "ok.json").write_text(Strategy.uniform("ddpm", 20, -1).to_json())  # default widths: 7
    subst = {"{bad}": str(tmp_path / "bad.json"), "{ok}": str(tmp_path / "ok.json"),
             "{ckpt}": str(checkpoint), "{nockpt}": str(tmp_path / "nowhere")}  # fmt: skip
    argv = ["strategy", "transfer", "--sampler", "dpmpp", "--steps", "10", "--out", str(tmp_path / "o.json")]
    argv += [subst.get(a, a) for a in extra]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "o.json").exists()


def _results_json(tmp_path):
    """A results.json as ``ddsm search`` writes it (config, pick, knee, front of candidate dicts)."""
    widths = (0.5, 0.75, 1.0)
    entry = lambda genome: {"genome": list(genome), "objectives": [1.0, 2.0], "status": "ok"}  # noqa: E731
    results = {
        "config": {"sampler": "ddpm", "steps": 4, "widths": list(widths), "population": 8},
        "pick": entry((0, 1, 2, 2)),
        "knee": entry((0, 0, 2, 2)),
        "front": [entry((0, 0, 0, 0)), entry((0, 0, 2, 2)), entry((0, 1, 2, 2)), entry((2, 2, 2, 2))],
    }
    path = tmp_path / "search" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(results))
    return path, widths


def test_read_strategies_from_a_strategy_file_or_a_search_results(tmp_path) -> None:
    path, widths = _results_json(tmp_path)
    got = read_strategies(path)
    assert [label for label, _ in got] == ["pick", "knee", "front 0", "front 3"]  # no repeats
    assert got[0][1] == Strategy("ddpm", 4, widths, (0, 1, 2, 2))
    single = tmp_path / "one.json"
    single.write_text(got[1][1].to_json())
    assert read_strategies(single) == [("one", got[1][1])]
    (tmp_path / "other.json").write_text(json.dumps({"front": []}))
    with pytest.raises(StrategyError, match="neither a strategy"):
        read_strategies(tmp_path / "other.json")
    (tmp_path / "empty.json").write_text(
        json.dumps({"config": {"sampler": "ddpm", "steps": 4, "widths": [1.0]}})
    )
    with pytest.raises(StrategyError, match="hold no genome"):
        read_strategies(tmp_path / "empty.json")


def test_cli_transfers_the_pick_of_a_results_json(tmp_path, capsys) -> None:
    path, _ = _results_json(tmp_path)
    argv = ["strategy", "transfer", "--strategy", str(path), "--sampler", "ddim", "--steps", "4"]
    code, stdout, err = run_cli([*argv, "--out", str(tmp_path / "o.json")], capsys)
    assert code == 0, err
    assert f"(pick of {path})" in stdout
    assert Strategy.from_json((tmp_path / "o.json").read_text()).genes == (0, 1, 2, 2)


def test_with_warm_start_transfers_drops_duplicates_and_caps() -> None:
    from ddsm_core.search import SearchDriver
    from ddsm_core.spec import SearchSpec, with_warm_start

    spec = SearchSpec(sampler="ddim", steps=4, population=5, widths=(0.5, 1.0))  # room for 3 seeds
    same = Strategy("ddim", 4, (0.5, 1.0), (0, 0, 0, 1))
    moved = Strategy("ddpm", 8, (0.5, 1.0), (0, 0, 0, 0, 0, 0, 1, 1))
    seeded, notes = with_warm_start(spec, [same, same, Strategy("ddim", 4, (0.5, 1.0), (1, 1, 1, 1)), moved])
    genomes = seeded.seed_genomes()
    assert genomes == ((0, 0, 0, 1), transfer_strategy(moved, "ddim", 4).genes) != ((0, 0, 0, 1),) * 2
    assert notes == ["warm start: dropped 2 duplicate seed(s) (a uniform strategy or an earlier seed)"]
    assert SearchSpec.from_json(seeded.to_json()) == seeded  # stored with the search
    first = SearchDriver(seeded.search_config(), seed=0).ask()
    assert first[:4] == [(0, 0, 0, 0), (1, 1, 1, 1), *genomes]
    many = [
        Strategy("ddim", 4, (0.5, 1.0), g) for g in ((0, 1, 1, 1), (0, 0, 0, 1), (1, 0, 1, 0), (0, 1, 0, 1))
    ]
    capped, notes = with_warm_start(spec, many)
    assert capped.seed_genomes() == tuple(s.genes for s in many[:3])
    assert notes == [
        "warm start: kept the first 3 of 4 seeds (population 5 holds the 2 uniform strategies and 3 seeds)"
    ]
    # a subset width set: indices follow the width values; a width it lacks is an error
    sub = SearchSpec(sampler="ddim", steps=4, population=5, widths=(0.5, 1.0))
    wide = Strategy("ddim", 4, (0.5, 0.75, 1.0), (0, 0, 2, 2))
    assert with_warm_start(sub, [wide])[0].seed_genomes() == ((0, 0, 1, 1),)
    with pytest.raises(ConfigError, match=r"warm start strategy 0 .*unknown width 0.75"):
        with_warm_start(sub, [wide.with_genes((0, 1, 2, 2))])
    with pytest.raises(ConfigError, match="not on this search's grid"):
        SearchSpec(sampler="ddim", steps=8, widths=(0.5, 1.0), warm_start=(moved.to_dict(),))
    with pytest.raises(ConfigError, match="warm_start strategy 0: strategy is missing"):
        SearchSpec(warm_start=({"genes": [0]},))
