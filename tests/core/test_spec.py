"""SearchSpec's seeds: the search's images and the finalists' (held out by default)."""

from __future__ import annotations

import pytest

from ddsm_core.checks import spec_errors_as_options
from ddsm_core.errors import ConfigError
from ddsm_core.spec import DEFAULTS, PROFILES, SEED_MAX, SearchSpec


def test_the_finalists_seeds_follow_every_image_the_search_ranks_on_by_default() -> None:
    assert DEFAULTS.final_seed is None and all(p.final_seed is None for p in PROFILES.values())
    assert DEFAULTS.seeds() == {"search": [0, 199], "final": [200, 699], "held_out": True}
    rungs = SearchSpec(eval_seed=1000, n_images=256, rungs=(64, 128), final_images=100)
    assert rungs.final_first_seed == 1256  # after the top rung: every rung reads the first of 1000..1255
    assert rungs.seeds() == {"search": [1000, 1255], "final": [1256, 1355], "held_out": True}
    assert rungs.final_seeds_note() is None
    assert SearchSpec.from_json(rungs.to_json()) == rungs and rungs.to_dict()["final_seed"] is None


@pytest.mark.parametrize(
    ("final_seed", "held_out"),
    [(0, False), (199, False), (200, True), (10_000, True)],
)
def test_an_explicit_final_seed_is_kept_and_an_overlap_is_flagged_not_refused(
    final_seed: int, held_out: bool
) -> None:
    spec = SearchSpec(final_seed=final_seed)  # search seeds 0..199, 500 finalist images
    assert spec.final_first_seed == final_seed and spec.seeds()["held_out"] is held_out
    assert SearchSpec.from_dict(spec.to_dict()).final_seed == final_seed
    note = spec.final_seeds_note()
    assert (note is None) is held_out
    if note is not None:
        assert f"{final_seed}..{final_seed + 499}" in note and "overlap the search's 0..199" in note
    # finalist seeds below the search's overlap only when they reach into them
    assert SearchSpec(eval_seed=1000, final_seed=500).seeds()["held_out"]
    assert not SearchSpec(eval_seed=1000, final_seed=501).seeds()["held_out"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"final_seed": -1}, "final_seed must be in [0, 4294967295]"),
        ({"final_seed": True}, "final_seed must be in"),
        ({"final_seed": 2.0}, "final_seed must be in"),
        ({"final_seed": SEED_MAX - 10}, "final_seed + final_images - 1 must be <= 4294967295"),
        ({"eval_seed": SEED_MAX - 300}, "eval_seed + n_images (its default) + final_images - 1"),
        ({"eval_seed": SEED_MAX - 100}, "eval_seed + n_images - 1 must be"),
    ],
)
def test_final_seeds_beyond_the_seed_range_are_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpec(**change)  # type: ignore[arg-type]
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_cli_names_final_seed_by_its_option() -> None:
    with pytest.raises(ConfigError) as info, spec_errors_as_options():
        SearchSpec(final_seed=SEED_MAX)
    assert str(info.value).startswith("--final-seed + --final-images - 1 must be")
    # the top of the seed range: an explicit final_seed below the search's fits
    top = SearchSpec(eval_seed=SEED_MAX - 199, final_seed=SEED_MAX - 699)
    assert top.seeds() == {"search": [SEED_MAX - 199, SEED_MAX], "final": [SEED_MAX - 699, SEED_MAX - 200],
                           "held_out": True}  # fmt: skip
