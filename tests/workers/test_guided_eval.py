"""The worker's evaluation takes guidance and the class label from the search spec (real model, CPU)."""

from __future__ import annotations

import pytest
import torch

from ddsm_core import checkpoint as ck
from ddsm_core.config import UNetConfig
from ddsm_core.flops import cost_table
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.spec import SearchSpec
from ddsm_core.unet import SlimmableUNet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CFG = UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10, null_label=True,
                        widths=(0.5, 0.75, 1.0))  # fmt: skip


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import ddsm_core.features as features
    from workers import compute

    torch.set_num_threads(1)
    tiny = features.DomainCNNConfig(width=8, feature_dim=16, epochs=1, batch_size=64)
    monkeypatch.setitem(features.DOMAIN_CONFIGS, "digits", tiny)
    monkeypatch.setenv("DDSM_CACHE_DIR", str(tmp_path / "cache"))
    compute._extractor.cache_clear()  # another test's extractor of the same name may be cached
    gen = torch.Generator().manual_seed(0)
    shapes = SlimmableUNet(CFG).state_dict()
    state = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in shapes.items()}
    ck.write_checkpoint(tmp_path / "c", step=1, model_config=CFG, schedule=NoiseSchedule.linear().to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    stats, _, extractor, _ = compute.reference_stats("digits", "domain", tmp_path / "ref.npz", "cpu")
    yield compute, tmp_path / "c", stats, extractor
    compute._extractor.cache_clear()


def test_worker_evaluation_is_guided_by_the_spec_and_keeps_its_prefix_cache_apart(setup) -> None:
    compute, checkpoint, stats, extractor = setup
    spec = SearchSpec(sampler="ddim", steps=3, widths=CFG.widths, n_images=8, batch_size=8, guidance=2.0)
    common = {"checkpoint": checkpoint, "checkpoint_sha": "guided-test-" + "0" * 52, "stats_path": stats,
              "extractor": extractor, "n_images": 8, "table": cost_table(CFG), "device": "cpu"}  # fmt: skip
    guided = compute.evaluate_genome(spec=spec, genome=(0, 1, 2), share_prefixes=True, **common)
    plain_spec = SearchSpec.from_dict({**spec.to_dict(), "guidance": None})
    shared = compute.evaluate_genome(spec=plain_spec, genome=(0, 1, 2), share_prefixes=True, **common)
    fresh = compute.evaluate_genome(spec=plain_spec, genome=(0, 1, 2), **common)
    assert guided["status"] == "ok" and guided["fid"] != fresh["fid"]
    assert guided["gflops"] == pytest.approx(2 * fresh["gflops"]) == spec.gflops((0, 1, 2), cost_table(CFG))
    assert guided["network_calls"] == 2 * fresh["network_calls"] == 6
    assert shared["fid"] == fresh["fid"]  # no sampler state of the guided run was reused
    one_class = compute.evaluate_genome(spec=spec.replace(class_label=4), genome=(0, 1, 2), **common)
    assert one_class["fid"] != guided["fid"]


def test_one_prefix_cache_serves_every_rung_of_a_search_with_the_same_images(setup) -> None:
    """Rung tasks of one search share the worker's prefix cache (as a local search's evaluator shares
    its own): a batch sampled at a low rung is resumed at a higher one, with the images of a fresh run."""
    compute, checkpoint, stats, extractor = setup
    spec = SearchSpec(sampler="ddim", steps=3, widths=CFG.widths, n_images=16, batch_size=8, rungs=(8,))
    common = {"checkpoint": checkpoint, "checkpoint_sha": "rungs-test-" + "0" * 53, "stats_path": stats,
              "extractor": extractor, "table": cost_table(CFG), "device": "cpu", "spec": spec}  # fmt: skip
    compute.evaluate_genome(genome=(0, 1, 2), n_images=8, share_prefixes=True, **common)  # rung 0
    top = compute.evaluate_genome(genome=(0, 1, 1), n_images=16, share_prefixes=True, **common)
    fresh = compute.evaluate_genome(genome=(0, 1, 1), n_images=16, **common)
    assert top["reused_fraction"] > 0  # the first batch's first two steps came from the rung-0 task
    assert top["fid"] == fresh["fid"]


def test_a_finalists_grid_is_its_first_images_from_the_evaluation_seeds(setup, tmp_path) -> None:
    from ddsm_core.data import save_image_grid
    from ddsm_core.evaluate import sample_images
    from ddsm_core.inference import prepare_for_inference

    compute, checkpoint, stats, extractor = setup
    spec = SearchSpec(sampler="ddim", steps=3, widths=CFG.widths, n_images=4, batch_size=4, eval_seed=7)
    grid = tmp_path / "grid.png"
    metrics = compute.evaluate_genome(
        checkpoint=checkpoint, checkpoint_sha="grid-test-" + "0" * 54, stats_path=stats, extractor=extractor,
        spec=spec, genome=(0, 1, 2), n_images=4, table=cost_table(CFG), device="cpu", grid_out=grid,
    )  # fmt: skip
    assert metrics["status"] == "ok" and "images" not in metrics
    # the same images as sampling seeds 7..10 with that strategy directly (the worker's model is EMA)
    model, schedule, _ = ck.load_checkpoint(checkpoint, use_ema=True)
    prepare_for_inference(model)
    images, _, _ = sample_images(model, schedule, spec.strategy((0, 1, 2)), [7, 8, 9, 10], 4)
    expected = save_image_grid(images.clamp(-1, 1), tmp_path / "expected.png", nrow=2)
    assert grid.read_bytes() == expected.read_bytes()


def test_a_paired_rung_gets_the_local_evaluators_paired_distance(setup) -> None:
    """The worker and ``ddsm search``'s GenomeEvaluator share FullWidthReference: a low rung of a search
    ranked by ``paired`` records the same distance to full width in both (0 for full width itself); the
    top rung and fid-ranked searches record none."""
    from ddsm_core.evaluate import GenomeEvaluator
    from ddsm_core.fid import FeatureStats

    compute, checkpoint, stats, extractor = setup
    spec = SearchSpec(sampler="ddim", steps=3, widths=CFG.widths, n_images=16, batch_size=8, rungs=(8,),
                      rung_metric="paired")  # fmt: skip
    sha = "paired-test-" + "0" * 52
    common = {"checkpoint": checkpoint, "checkpoint_sha": sha, "stats_path": stats, "extractor": extractor,
              "table": cost_table(CFG), "device": "cpu", "spec": spec}  # fmt: skip
    worker = {g: compute.evaluate_genome(genome=g, n_images=8, share_prefixes=True, **common)
              for g in ((0, 1, 2), (2, 2, 2), (0, 0, 0))}  # fmt: skip
    model, schedule, _ = compute.load_supernet(checkpoint, sha, "cpu")
    local = GenomeEvaluator(model, schedule, FeatureStats.load(stats), compute._extractor(extractor, "cpu"),
                            spec, costs=cost_table(CFG), cache_images=spec.ladder)  # fmt: skip
    for g, metrics in worker.items():
        record = local(g, 8).record
        assert metrics["paired_distance"] == record["paired_distance"] and metrics["fid"] == record["fid"]
    assert worker[(2, 2, 2)]["paired_distance"] == 0.0
    assert worker[(0, 0, 0)]["paired_distance"] > worker[(0, 1, 2)]["paired_distance"] > 0
    assert compute.evaluate_genome(genome=(0, 1, 2), n_images=16, **common)["paired_distance"] is None
    fid_ranked = {**common, "spec": spec.replace(rung_metric="fid")}
    assert compute.evaluate_genome(genome=(0, 1, 2), n_images=8, **fid_ranked)["paired_distance"] is None


def test_a_finalist_is_sampled_from_the_held_out_seeds_as_ddsm_search_samples_it(setup, tmp_path) -> None:
    """A finalist task (``final``) samples ``final_images`` from ``spec.final_first_seed + i`` (here
    the default, 7 + 4 = 11: after the search's seeds 7..10), with the local evaluator's features and
    FID; its grid is the first of those images; a search task of the same count reads other images."""
    import numpy as np

    from ddsm_core.data import save_image_grid
    from ddsm_core.evaluate import GenomeEvaluator, sample_images
    from ddsm_core.fid import FeatureStats

    compute, checkpoint, stats, extractor = setup
    spec = SearchSpec(sampler="ddim", steps=3, widths=CFG.widths, n_images=4, final_images=6, batch_size=4,
                      eval_seed=7)  # fmt: skip
    sha = "final-seeds-" + "0" * 52
    common = {"checkpoint": checkpoint, "checkpoint_sha": sha, "stats_path": stats, "extractor": extractor,
              "table": cost_table(CFG), "device": "cpu", "spec": spec, "genome": (0, 1, 2),
              "n_images": 6}  # fmt: skip
    features, grid = tmp_path / "features.npy", tmp_path / "grid.png"
    final = compute.evaluate_genome(final=True, share_prefixes=True, features_out=features, grid_out=grid,
                                    **common)  # fmt: skip
    model, schedule, _ = compute.load_supernet(checkpoint, sha, "cpu")
    local = GenomeEvaluator(model, schedule, FeatureStats.load(stats), compute._extractor(extractor, "cpu"),
                            spec, costs=cost_table(CFG), cache_images=spec.ladder)  # fmt: skip
    assert final["fid"] == local.evaluate_final((0, 1, 2)).record["fid"]
    assert np.array_equal(np.load(features), local.final_features()[(0, 1, 2)])
    images, _, _ = sample_images(model, schedule, spec.strategy((0, 1, 2)), list(range(11, 17)), 4)
    expected = save_image_grid(images.clamp(-1, 1), tmp_path / "expected.png", nrow=3)
    assert grid.read_bytes() == expected.read_bytes()
    searched = compute.evaluate_genome(features_out=tmp_path / "search.npy", **common)  # seeds 7..12
    assert searched["fid"] != final["fid"]
    # image by image: the seeds they share (11, 12) give the same features (up to float32 batching),
    # the others do not
    search_rows, final_rows = np.load(tmp_path / "search.npy"), np.load(features)
    assert np.allclose(search_rows[4:], final_rows[:2], rtol=1e-4, atol=1e-5)
    assert not np.allclose(search_rows[:4], final_rows[2:], rtol=1e-2, atol=1e-3)
