"""Latency tables: JSON round trip, lookups, the prediction's arithmetic, and the prediction checked
against measured sampling time on the CPU; ``ddsm latency``."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch

from ddsm_core.cli import app, run_app
from ddsm_core.config import UNetConfig
from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.inference import prepare_for_inference
from ddsm_core.latency import LatencyTable, measure_latency
from ddsm_core.sampling import VPDenoiser, sample
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import Strategy
from ddsm_core.unet import SlimmableUNet


def table(**overrides) -> LatencyTable:
    base = dict(
        device="cpu: test", dtype="float32", threads=1, widths=(0.5, 1.0), batch_sizes=(1, 9),
        seconds=((0.010, 0.050), (0.020, 0.140)), overhead={"ddpm": (0.001, 0.003), "edm": (0.002, 0.004)},
        model={"preset": "digits"}, method={"repeats": 3},
    )  # fmt: skip
    return LatencyTable(**{**base, **overrides})


def test_json_round_trip_gives_an_equal_table(tmp_path):
    t = table()
    assert LatencyTable.from_json(t.to_json()) == t
    assert LatencyTable.load(t.save(tmp_path / "t.json")) == t


def test_lookup_interpolates_linearly_between_measured_batch_sizes():
    t = table()
    assert t.call_seconds(0.5, 9) == pytest.approx(0.050)
    assert t.call_seconds(0.5, 5) == pytest.approx(0.030)  # halfway between 1 and 9
    assert t.call_seconds(1.0, 17) == pytest.approx(0.260)  # extended beyond the largest batch
    assert t.step_overhead("edm-heun", 5) == pytest.approx(0.003)
    assert t.step_overhead("dpmpp", 5) == 0.0  # not measured


def test_prediction_is_the_sum_over_network_calls_plus_the_per_step_overhead():
    t = table()
    ddpm = Strategy("ddpm", 4, (0.5, 1.0), (0, 0, 1, 1))
    assert t.predict_batch(ddpm, 9) == pytest.approx(2 * 0.050 + 2 * 0.140 + 4 * 0.003)
    edm = Strategy("edm", 3, (0.5, 1.0), (1, 0, 0))  # 2 + 2 + 1 calls, both Heun calls at the step's width
    assert t.predict_batch(edm, 1) == pytest.approx(2 * 0.020 + 3 * 0.010 + 3 * 0.002)
    # 20 images in batches of 9: two full batches and one of 2
    assert t.predict(ddpm, 20, 9) == pytest.approx(2 * t.predict_batch(ddpm, 9) + t.predict_batch(ddpm, 2))
    assert t.per_image(ddpm, 9) == pytest.approx(t.predict_batch(ddpm, 9) / 9)


def test_bad_tables_and_widths_are_config_errors():
    with pytest.raises(ConfigError, match="one per batch size"):
        table(seconds=((0.01,), (0.02, 0.03)))
    with pytest.raises(ConfigError, match="missing key 'seconds'"):
        LatencyTable.from_dict({k: v for k, v in table().to_dict().items() if k != "seconds"})
    with pytest.raises(ConfigError, match="dtype"):
        table(dtype="float64")
    with pytest.raises(StrategyError, match="allowed: 4/8, 8/8"):
        table().call_seconds(0.25, 1)


def _measured(denoiser, strategy, shape, batch):
    start = time.thread_time()
    sample(denoiser, strategy, shape, range(batch))
    return time.thread_time() - start


def test_predicted_sampling_time_matches_measured_on_cpu():
    """digits preset, batch 8, DDPM-10: the prediction lands near the measured time for a narrow, a
    mixed and a full-width strategy. Both sides count the thread's CPU time (one torch thread), which
    other jobs on a shared CI machine do not inflate; tables and sampling runs alternate over three
    rounds and the median error counts (bench/latency_prediction.md measures the error properly)."""
    torch.set_num_threads(1)
    cfg = UNetConfig.digits()
    model = prepare_for_inference(SlimmableUNet(cfg))
    schedule = NoiseSchedule.linear()
    denoiser = VPDenoiser(model, schedule)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    strategies = [
        Strategy.uniform("ddpm", 10, 0, cfg.widths),
        Strategy.piecewise("ddpm", 10, [0, 6], widths=cfg.widths),
        Strategy.uniform("ddpm", 10, 6, cfg.widths),
    ]
    errors: list[list[float]] = [[] for _ in strategies]
    for _ in range(3):
        lat = measure_latency(
            model, [8], schedule=schedule, samplers=["ddpm"], repeats=3, warmup=1, clock=time.thread_time
        )
        with torch.inference_mode():
            for err, s in zip(errors, strategies, strict=True):
                measured = _measured(denoiser, s, shape, 8)
                err.append(abs(lat.predict(s, 8) - measured) / measured)
    medians = [statistics.median(e) for e in errors]
    # Even CPU time varies by up to ~30% between rounds on the shared 2-vCPU CI machine (siblings'
    # caches), so the bound is loose; it still catches a prediction that misses the widths or the
    # calls (uniform 2/8 predicted as full width would be ~3x off). The bench measures the real error.
    assert max(medians) < 0.4, errors
    assert lat.predict(strategies[0], 8) < lat.predict(strategies[1], 8) < lat.predict(strategies[2], 8)


def test_cli_latency_writes_a_table_for_a_preset(tmp_path, capsys):
    out = tmp_path / "lat.json"
    argv = ["latency", "--preset", "digits", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0"]
    code = run_app(app, [*argv, "--out", str(out), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    t = LatencyTable.load(out)
    assert (
        t.batch_sizes == (1, 2) and len(t.widths) == 7 and set(t.overhead) == {"ddpm", "ddim", "edm", "dpmpp"}
    )
    assert t.model["preset"] == "digits" and t.threads == 1
    assert "ms per network call" in captured.out
    assert json.loads(out.read_text())["format"] == "ddsm-latency-table"


def test_cli_latency_measures_a_checkpoint_and_names_it(tmp_path, capsys):
    from ddsm_core import checkpoint as ck

    cfg = UNetConfig.digits(model_channels=16, num_res_blocks=1)
    state = SlimmableUNet(cfg).state_dict()
    ckpt = tmp_path / "ckpt"
    ck.write_checkpoint(ckpt, step=3, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    out = tmp_path / "lat.json"
    argv = ["latency", "--checkpoint", str(ckpt), "--batch-sizes", "2", "--repeats", "1", "--warmup", "0"]
    assert run_app(app, [*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    t = LatencyTable.load(out)
    assert t.model["step"] == 3 and len(t.model["manifest_sha256"]) == 64
    assert t.model["config"] == cfg.to_dict() and t.widths == cfg.widths


@pytest.mark.parametrize(
    "argv, message",
    [
        (["latency"], "exactly one of --checkpoint"),
        (["latency", "--preset", "digits", "--batch-sizes", "0"], "positive"),
        (["latency", "--preset", "nope"], "unknown preset"),
        (["latency", "--preset", "digits", "--dtype", "int8"], "unknown dtype"),
    ],
)
def test_cli_latency_bad_input_is_a_one_line_error(argv, message, capsys):
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_cli_latency_writes_into_the_checkpoint_folder_where_search_finds_it(tmp_path, capsys):
    from ddsm_core import checkpoint as ck
    from ddsm_core.latency import device_name, find_table, table_filename

    cfg = UNetConfig.digits(model_channels=16, num_res_blocks=1, widths=(0.5, 1.0))
    state = SlimmableUNet(cfg).state_dict()
    ck.write_checkpoint(tmp_path / "run", step=2, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    argv = ["latency", "--checkpoint", str(tmp_path / "run"), "--batch-sizes", "2", "--repeats", "1",
            "--warmup", "0"]  # fmt: skip
    assert run_app(app, argv) == 0, capsys.readouterr().err
    here = device_name("cpu")
    path = tmp_path / "run" / table_filename(here, "float32")
    assert path.name.startswith("latency-cpu-") and path.name.endswith("-float32.json")
    assert str(path) in capsys.readouterr().out
    found = find_table(tmp_path / "run", here)
    assert found is not None and found.widths == (0.5, 1.0) and found.batch_sizes == (2,)
    assert find_table(tmp_path / "run", here, "bfloat16") is None
    ck.read_manifest(tmp_path / "run", verify=True)  # the checkpoint itself is unchanged


def test_table_file_names_are_safe_slugs_of_the_device():
    from ddsm_core.latency import table_filename

    assert (
        table_filename("cuda: NVIDIA H100 80GB HBM3", "bfloat16")
        == "latency-cuda-nvidia-h100-80gb-hbm3-bfloat16.json"
    )
    assert "/" not in table_filename("cpu: ../../etc", "float32")


def test_search_objective_round_trips_and_unknown_ones_are_refused():
    from ddsm_core.spec import SearchSpec

    spec = SearchSpec(objective="latency", widths=(0.5, 1.0), population=4)
    assert SearchSpec.from_json(spec.to_json()) == spec and spec.to_dict()["objective"] == "latency"
    assert (
        SearchSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "objective"}).objective
        == "gflops"
    )
    with pytest.raises(ConfigError, match="gflops, latency"):
        SearchSpec(objective="seconds")


def test_a_searchs_latency_is_per_image_at_its_batch_size_with_guidance_as_one_double_batch():
    from ddsm_core.spec import SearchSpec

    lat = table()  # widths 1/2, 1; batches 1 and 9; ddpm overhead 1 ms and 3 ms per step
    spec = SearchSpec(steps=2, widths=(0.5, 1.0), population=4, batch_size=9)
    assert spec.latency((0, 1), lat) == pytest.approx((0.050 + 0.140 + 2 * 0.003) / 9)
    assert spec.latency((0, 1), lat) == pytest.approx(lat.per_image(spec.strategy((0, 1)), 9))
    guided = spec.replace(guidance=2.0, batch_size=1)
    # two passes: the calls at batch 2 (interpolated), the sampler's own work at batch 1
    calls = (0.010 + 0.040 / 8) + (0.020 + 0.120 / 8)
    assert guided.latency((0, 1), lat) == pytest.approx(calls + 2 * 0.001)
    assert spec.cost({"gflops": 3.0, "predicted_latency_s": 0.002}) == 3.0
    as_latency = spec.replace(objective="latency")
    assert as_latency.cost({"gflops": 3.0, "predicted_latency_s": 0.002}) == pytest.approx(2.0)  # ms
    with pytest.raises(ConfigError, match="no predicted latency"):
        as_latency.cost({"gflops": 3.0})
    with pytest.raises(ConfigError, match="needs a latency table"):
        as_latency.check_latency_table(None)
    spec.check_latency_table(None)  # GFLOPs: a table is optional
    with pytest.raises(ConfigError, match=r"\[0.75\]"):
        SearchSpec(widths=(0.5, 0.75, 1.0), population=4).check_latency_table(lat)
