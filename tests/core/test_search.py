"""NSGA-II ask-and-tell driver: determinism, resume, dedup, penalties, mutation rate."""

from __future__ import annotations

import json
import math
import random
import sys

import numpy as np
import pytest
from pymoo.core.population import Population

from ddsm_core.errors import ConfigError
from ddsm_core.search import (
    Evaluation,
    GeneMutation,
    SearchConfig,
    SearchDriver,
    _StrategyProblem,
    initial_genomes,
    non_dominated,
    run_search,
    state_front,
)


def toy_objectives(genome: tuple[int, ...]) -> tuple[float, float]:
    """Late steps (near the image) matter more; cost grows with width."""
    steps = len(genome)
    fid = sum((6 - g) ** 2 * (i + 1) / steps for i, g in enumerate(genome))
    return fid, float(sum(g + 2 for g in genome))


def run_driver(driver: SearchDriver, fail=lambda g: False) -> list[tuple[int, ...]]:
    asked: list[tuple[int, ...]] = []
    while not driver.done:
        genomes = driver.ask()
        asked.extend(genomes)
        driver.tell(genomes, [None if fail(g) else toy_objectives(g) for g in genomes])
    return asked


CFG = SearchConfig(
    steps=8, n_widths=7, population=16, generations=5, mutation_rate=0.05, crossover="one_point"
)


def test_the_paper_profile_gives_the_papers_nsga2_settings() -> None:
    from ddsm_core.spec import profile

    cfg = profile("paper").bind((0.25, 0.5, 0.75, 1.0)).search_config()
    assert (cfg.population, cfg.generations, cfg.mutation_rate, cfg.n_widths) == (50, 10, 0.001, 4)


def test_first_generation_holds_every_uniform_strategy_and_distinct_random_ones() -> None:
    genomes = SearchDriver(CFG, seed=3).ask()
    assert len(genomes) == CFG.population == len(set(genomes))
    for i in range(CFG.n_widths):
        assert (i,) * CFG.steps in genomes
    assert initial_genomes(CFG, 3) == initial_genomes(CFG, 3) != initial_genomes(CFG, 4)


def test_warm_start_genomes_join_the_first_generation() -> None:
    warm = (0, 0, 1, 2, 3, 4, 5, 6)
    assert warm in SearchDriver(SearchConfig(**{**CFG.__dict__, "initial": (warm,)}), seed=0).ask()


def test_same_seed_gives_the_same_search() -> None:
    a, b, c = SearchDriver(CFG, seed=1), SearchDriver(CFG, seed=1), SearchDriver(CFG, seed=2)
    asked_a, asked_b, asked_c = run_driver(a), run_driver(b), run_driver(c)
    assert asked_a == asked_b and asked_a != asked_c
    assert [x.genome for x in a.front()] == [x.genome for x in b.front()]


def test_a_genome_is_never_evaluated_twice() -> None:
    driver = SearchDriver(
        SearchConfig(
            steps=3, n_widths=3, population=9, generations=6, mutation_rate=0.2, crossover="one_point"
        ),
        0,
    )
    asked = run_driver(driver)
    assert len(asked) == len(set(asked)) == len(driver.candidates)
    assert len(asked) <= 27  # the space is 3**3


def test_exhausted_space_ends_the_search_instead_of_looping() -> None:
    driver = SearchDriver(
        SearchConfig(
            steps=2, n_widths=2, population=4, generations=50, mutation_rate=0.5, crossover="one_point"
        ),
        0,
    )
    run_driver(driver)
    assert driver.done and len(driver.candidates) == 4


def test_ask_before_tell_repeats_and_partial_tells_complete_the_generation() -> None:
    driver = SearchDriver(CFG, seed=0)
    first = driver.ask()
    assert driver.ask() == first
    half = len(first) // 2
    driver.tell(first[:half], [toy_objectives(g) for g in first[:half]])
    assert driver.generation == 0 and driver.ask() == first[half:]
    driver.tell(first[half:], [toy_objectives(g) for g in first[half:]])
    driver.tell(first[:1], [(0.0, 0.0)])  # a redelivered result is ignored
    assert driver.generation == 1 and driver.lookup(first[0]).objectives == toy_objectives(first[0])
    with pytest.raises(ValueError, match="not asked"):
        driver.tell([(1, 2, 3, 4, 5, 6, 0, 1)], [(1.0, 1.0)])


def test_failed_evaluations_get_a_penalty_and_the_search_goes_on() -> None:
    driver = SearchDriver(CFG, seed=0)
    genomes = driver.ask()
    objs: list = [toy_objectives(g) for g in genomes]
    objs[0], objs[1] = None, (math.nan, 3.0)
    driver.tell(genomes, objs, reasons=["diverged"] + [None] * (len(genomes) - 1))
    run_driver(driver)
    bad = [c for c in driver.candidates if not c.ok]
    assert {c.genome for c in bad} >= {genomes[0], genomes[1]}
    assert driver.lookup(genomes[0]).reason == "diverged"
    assert "non-finite" in driver.lookup(genomes[1]).reason
    assert all(c.ok for c in driver.front())


def test_front_pick_and_knee() -> None:
    driver = SearchDriver(CFG, seed=0)
    run_driver(driver)
    front = driver.front()
    pts = [c.objectives for c in front]
    assert non_dominated(pts) == list(range(len(pts)))
    assert [c.cost for c in front] == sorted(c.cost for c in front)
    assert driver.pick(0.0).fid == min(c.fid for c in driver.candidates if c.ok)
    assert driver.pick(1e9).cost == min(c.cost for c in driver.candidates if c.ok)
    assert driver.knee() in front
    within = driver.cheapest_within(front[-1].fid + 1.0)
    assert within is not None and within.cost <= front[-1].cost


def test_step_aware_strategies_beat_uniform_ones_on_the_toy_problem() -> None:
    driver = SearchDriver(
        SearchConfig(
            steps=12, n_widths=7, population=30, generations=8, mutation_rate=0.001, crossover="one_point"
        ),
        seed=0,
    )
    run_driver(driver)
    for index in (3, 4):
        fid, cost = toy_objectives((index,) * 12)
        assert any(c.cost <= cost and c.fid < 0.9 * fid for c in driver.front())


def test_state_round_trip_through_json_resumes_exactly() -> None:
    ref = SearchDriver(CFG, seed=5)
    ref_asked = run_driver(ref)
    driver = SearchDriver(CFG, seed=5)
    asked: list = []
    for _ in range(2):  # two generations, then half of the third
        g = driver.ask()
        asked += g
        driver.tell(g, [toy_objectives(x) for x in g])
    g = driver.ask()
    asked += g
    driver.tell(g[:3], [toy_objectives(x) for x in g[:3]])
    state = json.loads(json.dumps(driver.state_dict()))
    resumed = SearchDriver.from_state_dict(state)
    assert resumed.ask() == g[3:]
    asked += run_driver(resumed)
    assert list(dict.fromkeys(asked)) == ref_asked
    assert [c.genome for c in resumed.front()] == [c.genome for c in ref.front()]


def json_round_trip(driver: SearchDriver) -> SearchDriver:
    """What a restarted process sees: the state through strict JSON (no NaN/Infinity tokens)."""
    return SearchDriver.from_state_dict(json.loads(json.dumps(driver.state_dict(), allow_nan=False)))


def outcome(driver: SearchDriver) -> dict:
    return {
        "candidates": [c.to_dict() for c in driver.candidates],
        "history": driver.history,
        "front": [c.genome for c in driver.front()],
        "picks": [driver.pick(w).genome for w in (0.0, 0.05, 1.0, 1e9)],
        "knee": driver.knee().genome,
        "population": driver.population,
    }


RESUME_CONFIGS = [
    CFG,
    SearchConfig(
        steps=6,
        n_widths=4,
        population=12,
        generations=7,
        mutation_rate=0.2,
        mutation="creep",
        crossover="one_point",
    ),
    SearchConfig(steps=8, n_widths=5, population=10, generations=6, mutation_rate=0.1, crossover="uniform"),
    SearchConfig(
        steps=3, n_widths=3, population=9, generations=8, mutation_rate=0.3, crossover="one_point"
    ),  # space runs out
]


@pytest.mark.parametrize("seed", [0, 11])
@pytest.mark.parametrize("config", RESUME_CONFIGS, ids=lambda c: f"{c.crossover}-{c.mutation}-{c.steps}")
def test_resuming_from_json_after_every_generation_equals_the_uninterrupted_search(
    config: SearchConfig, seed: int
) -> None:
    fail = lambda g: sum(g) % 5 == 1  # noqa: E731  some failed evaluations get the penalty
    ref = SearchDriver(config, seed=seed)
    ref_asked = run_driver(ref, fail)
    driver, asked, resumes = SearchDriver(config, seed=seed), [], 0
    while not driver.done:
        genomes = driver.ask()
        asked += genomes
        driver = json_round_trip(driver)  # after ask: the generation is pending
        driver.tell(genomes, [None if fail(g) else toy_objectives(g) for g in genomes])
        driver = json_round_trip(driver)  # after tell: the generation is complete
        resumes += 2
    assert resumes >= 4 and asked == ref_asked
    assert outcome(driver) == outcome(ref)
    assert driver.state_dict() == ref.state_dict()


def test_resuming_from_json_after_every_single_result_equals_the_uninterrupted_search() -> None:
    ref = SearchDriver(CFG, seed=4)
    ref_asked = run_driver(ref)
    driver, asked = SearchDriver(CFG, seed=4), []
    while not driver.done:
        genomes = driver.ask()
        asked += genomes
        for g in genomes:
            driver.tell([g], [toy_objectives(g)])
            driver = json_round_trip(driver)
    assert asked == ref_asked and outcome(driver) == outcome(ref)


def test_the_state_is_plain_data_with_the_rng_as_32_bit_words() -> None:
    driver = SearchDriver(CFG, seed=3)
    genomes = driver.ask()
    driver.tell(
        genomes, [None] + [toy_objectives(g) for g in genomes[1:]], records=[{"fid": math.nan}] * len(genomes)
    )
    driver.ask()
    state = driver.state_dict()

    def leaves(value):
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                yield from leaves(v)
        elif isinstance(value, list):
            for v in value:
                yield from leaves(v)
        else:
            yield value

    assert all(v is None or type(v) in (str, int, float, bool) for v in leaves(state))
    json.dumps(state, allow_nan=False)  # Postgres' json type refuses NaN and Infinity
    assert "algorithm" not in state and state["format"] == "ddsm-search-v2"
    rng = state["rng"]
    assert all(0 <= w < 2**32 for w in rng["state"] + rng["inc"]) and len(rng["state"]) == 4
    assert len(state["rank"]) == len(state["crowding"]) == len(state["population"]) == CFG.population
    assert "inf" in state["crowding"]  # the ends of a front
    resumed = json_round_trip(driver)
    assert math.isnan(resumed.lookup(genomes[0]).record["fid"])
    assert [c.genome for c in state_front(state)] == [c.genome for c in driver.front()] != []


class _WritesAFile:
    """Unpickling this object opens (creates) a file: the stand-in for any code in a crafted state."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["ddsm-search-v1", "ddsm-search-v2"])
def test_a_crafted_state_with_a_pickle_runs_no_code(tmp_path, fmt: str) -> None:
    import base64
    import pickle

    driver = SearchDriver(CFG, seed=5)
    for _ in range(2):
        g = driver.ask()
        driver.tell(g, [toy_objectives(x) for x in g])
    marker = tmp_path / "pwned"
    payload = base64.b64encode(pickle.dumps(_WritesAFile(str(marker)))).decode()
    pickle.loads(base64.b64decode(payload)).close()  # the payload works when unpickled ...
    assert marker.exists()
    marker.unlink()
    state = {**driver.state_dict(), "format": fmt, "algorithm": payload}
    rebuilt = SearchDriver.from_state_dict(json.loads(json.dumps(state)))
    assert not marker.exists()  # ... but loading the state never unpickles it
    assert rebuilt.population == driver.population and rebuilt.generation == 2
    run_driver(rebuilt)
    assert rebuilt.done and len(rebuilt.candidates) > len(driver.candidates)


def test_an_old_state_is_rebuilt_from_its_stored_population() -> None:
    driver = SearchDriver(CFG, seed=5)
    for _ in range(2):
        g = driver.ask()
        driver.tell(g, [toy_objectives(x) for x in g])
    driver.ask()  # the third generation is pending: an old state asks it anew
    old = {k: v for k, v in driver.state_dict().items() if k not in ("rank", "crowding", "rng")}
    old.update(format="ddsm-search-v1", algorithm="bm90IGEgcGlja2xl")
    rebuilt = SearchDriver.from_state_dict(old)
    assert rebuilt.population == driver.population and rebuilt.generation_genomes == []
    assert [c.genome for c in rebuilt.candidates] == [c.genome for c in driver.candidates]
    assert rebuilt.ask() and run_driver(rebuilt) is not None and rebuilt.done


def _corrupt(state: dict, how: str) -> dict:
    s = json.loads(json.dumps(state))
    if how == "rng word":
        s["rng"]["state"][0] = 2**40
    elif how == "rng kind":
        s["rng"]["bit_generator"] = "MT19937"
    elif how == "unevaluated member":
        s["population"][0] = [6] * CFG.steps if [6] * CFG.steps not in s["population"] else [0, 1] * 4
        s["candidates"] = [c for c in s["candidates"] if c["genome"] != s["population"][0]]
    elif how == "rank length":
        s["rank"] = s["rank"][:-1]
    elif how == "generation":
        s["generation"] = CFG.generations + 3
    elif how == "float generation":
        s["generation"] = 2.0
    elif how == "genome range":
        s["pending"][0] = [99] * CFG.steps
    elif how == "crowding":
        s["crowding"][0] = "__import__('os')"
    elif how == "candidates":
        s["candidates"] = "all"
    elif how == "format":
        s["format"] = "pickle"
    elif how == "not an object":
        return ["ddsm-search-v2"]  # type: ignore[return-value]
    return s


@pytest.mark.parametrize(
    "how",
    ["rng word", "rng kind", "unevaluated member", "rank length", "generation", "float generation",
     "genome range", "crowding", "candidates", "format", "not an object"],
)  # fmt: skip
def test_a_malformed_state_is_refused_with_a_config_error(how: str) -> None:
    driver = SearchDriver(CFG, seed=5)
    for _ in range(2):
        g = driver.ask()
        driver.tell(g, [toy_objectives(x) for x in g])
    driver.ask()
    before = driver.state_dict()
    bad = _corrupt(before, how)
    with pytest.raises(ConfigError):
        SearchDriver.from_state_dict(bad)
    if isinstance(bad, dict) and isinstance(bad.get("config"), dict):
        with pytest.raises(ConfigError):
            driver.load_state_dict(bad)
        assert driver.state_dict() == before  # a refused state leaves the driver as it was


def test_a_first_generation_that_does_not_match_its_seed_is_refused() -> None:
    driver = SearchDriver(CFG, seed=5)
    driver.ask()
    state = driver.state_dict()
    state["pending"] = state["pending"][::-1]
    with pytest.raises(ConfigError, match="first generation"):
        SearchDriver.from_state_dict(state)


def test_run_search_refuses_a_corrupt_state_file_with_a_message(tmp_path) -> None:
    (tmp_path / "search_state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        run_search(CFG, _toy_eval([]), tmp_path, n_images=10, final_images=10, weight=0.1, progress=False)


def test_state_of_another_config_is_refused() -> None:
    state = SearchDriver(CFG, seed=0).state_dict()
    other = SearchDriver(
        SearchConfig(
            steps=8, n_widths=7, population=16, generations=6, mutation_rate=0.001, crossover="one_point"
        ),
        seed=0,
    )
    with pytest.raises(ConfigError, match="another search configuration"):
        other.load_state_dict(state)


@pytest.mark.parametrize("kind", ["reset", "creep"])
@pytest.mark.parametrize("rate", [0.001, 0.05, 0.3])
def test_mutation_changes_genes_at_the_configured_rate(kind: str, rate: float) -> None:
    steps, n = 50, 20000 if rate == 0.001 else 2000
    rng = np.random.default_rng(0)
    X = rng.integers(0, 7, size=(n, steps))
    pop = Population.new(X=X.copy())
    out = GeneMutation(rate, kind).do(_StrategyProblem(steps, 7), pop, random_state=np.random.default_rng(1))
    Y = out.get("X")
    changed = int((Y != X).sum())
    expected, sd = X.size * rate, math.sqrt(X.size * rate * (1 - rate))
    assert abs(changed - expected) < 5 * sd, (changed, expected)
    assert Y.min() >= 0 and Y.max() <= 6
    if kind == "creep":
        assert np.abs(Y - X).max() == 1


def test_driver_mates_with_the_configured_mutation_and_offspring_differ() -> None:
    cfg = SearchConfig(steps=8, n_widths=7, population=16, generations=3, mutation_rate=0.2, crossover="none")
    driver = SearchDriver(cfg, seed=0)
    first = driver.ask()
    driver.tell(first, [toy_objectives(g) for g in first])
    mutation = driver._algorithm.mating.mutation
    assert isinstance(mutation, GeneMutation) and mutation.rate == 0.2
    parents = np.array(driver.population)
    offspring = np.array(driver.generation_genomes if driver.ask() else [])
    # without crossover every offspring is a mutated copy of a parent
    dist = (offspring[:, None, :] != parents[None, :, :]).sum(-1).min(1)
    assert len(offspring) > 0 and (dist >= 1).all()


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="uniform strategies"):
        SearchConfig(
            steps=8, n_widths=7, population=5, generations=10, mutation_rate=0.001, crossover="one_point"
        )
    with pytest.raises(ConfigError, match="allowed"):
        SearchConfig(
            steps=8, n_widths=7, crossover="magic", population=50, generations=10, mutation_rate=0.001
        )  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not fit"):
        SearchConfig(
            steps=3,
            n_widths=7,
            population=50,
            generations=10,
            mutation_rate=0.001,
            crossover="one_point",
            initial=((0, 9, 1),),
        )


def test_search_module_imports_without_torch() -> None:
    import subprocess

    code = "import sys; sys.modules['torch'] = None; import ddsm_core.search"
    subprocess.run([sys.executable, "-c", code], check=True)


def _toy_eval(calls: list, fail_after: int | None = None):
    def evaluate(genome: tuple[int, ...], n_images: int) -> Evaluation:
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append((genome, n_images))
        fid, cost = toy_objectives(genome)
        return Evaluation((fid + 1.0 / n_images, cost), record={"n_images": n_images})

    return evaluate


def test_run_search_resumes_where_an_uninterrupted_search_ends(tmp_path) -> None:
    kwargs = dict(seed=2, n_images=10, final_images=100, weight=0.5, progress=False)
    ref_calls: list = []
    ref = run_search(CFG, _toy_eval(ref_calls), tmp_path / "ref", **kwargs)
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        run_search(CFG, _toy_eval(calls, fail_after=37), tmp_path / "run", **kwargs)
    assert (tmp_path / "run" / "search_state.json").exists()
    run = run_search(CFG, _toy_eval(calls), tmp_path / "run", **kwargs)
    assert run.resumed
    assert calls == ref_calls  # nothing evaluated twice, same order
    assert run.pick.genome == ref.pick.genome and run.knee.genome == ref.knee.genome
    assert run.final["pick"].record["n_images"] == 100
    assert [c.to_dict() for c in run.driver.candidates] == [c.to_dict() for c in ref.driver.candidates]


def test_non_dominated_sweep_matches_the_pairwise_definition_with_ties() -> None:
    from ddsm_core.search import _non_dominated_pairwise

    rng = random.Random(7)
    for n in (0, 1, 2, 5, 40, 300):
        pts = [(float(rng.randint(0, 9)), float(rng.randint(0, 9))) for _ in range(n)]  # many ties
        assert non_dominated(pts) == _non_dominated_pairwise(pts)
    with_nan = [(1.0, 2.0), (math.nan, 0.0), (0.5, 3.0)]
    assert non_dominated(with_nan) == _non_dominated_pairwise(with_nan)
