"""SPDY's dynamic program against brute force."""

import itertools
import math
import random

import pytest

from sparsekit import spdy
from sparsekit.errors import SparsekitError

INSTANCES = 500


def brute_force(times, costs, budget):
    """Least summed cost over every choice of levels whose summed time fits ``budget``."""
    best = math.inf
    for choice in itertools.product(*(range(len(row)) for row in times)):
        if sum(row[i] for row, i in zip(times, choice)) <= budget:
            best = min(best, sum(row[i] for row, i in zip(costs, choice)))
    return best


def random_instance(rng, whole_times: bool):
    layers, levels = rng.randint(1, 4), rng.randint(1, 4)
    draw = (lambda: rng.randint(0, 12)) if whole_times else (lambda: rng.uniform(0, 12))
    times = [[draw() for _ in range(levels)] for _ in range(layers)]
    costs = [[rng.choice([0.0, rng.uniform(0, 10)]) for _ in range(levels)] for _ in range(layers)]
    fastest, slowest = sum(min(r) for r in times), sum(max(r) for r in times)
    budget = rng.uniform(fastest, slowest + 1)
    return times, costs, (max(1, math.ceil(budget)) if whole_times else max(budget, 1e-3))


def picked(table, choice):
    return sum(row[i] for row, i in zip(table, choice))


def test_whole_step_times_give_the_brute_force_optimum():
    rng = random.Random(0)
    for _ in range(INSTANCES):
        times, costs, budget = random_instance(rng, whole_times=True)
        # one bucket per time unit: the discretisation is exact
        choice = spdy.solve(times, costs, budget, buckets=budget)
        assert len(choice) == len(times)
        assert picked(times, choice) <= budget
        assert picked(costs, choice) == pytest.approx(brute_force(times, costs, budget))


def test_any_times_respect_the_budget_and_lose_at_most_one_step_per_layer():
    rng = random.Random(1)
    for _ in range(INSTANCES):
        times, costs, budget = random_instance(rng, whole_times=False)
        buckets = rng.choice([7, 50, 1000])
        try:
            choice = spdy.solve(times, costs, budget, buckets=buckets)
        except SparsekitError:  # only when rounding up leaves nothing that fits
            assert brute_force(times, costs, budget - len(times) * budget / buckets) == math.inf
            continue
        assert picked(times, choice) <= budget
        # every choice fitting within a step per layer of slack is one the program saw
        assert (
            picked(costs, choice)
            <= brute_force(times, costs, budget - len(times) * budget / buckets) + 1e-9
        )
        assert picked(costs, choice) >= brute_force(times, costs, budget) - 1e-9


def test_a_budget_below_the_fastest_time_says_the_fastest():
    with pytest.raises(SparsekitError, match="fastest reachable time is 3"):
        spdy.solve([[2, 5], [1, 4]], [[1, 0], [1, 0]], 2.5)


def test_levels_far_past_the_budget_are_never_chosen():
    assert spdy.solve([[1e300, 1.0], [2.0, 1e30]], [[0.0, 5.0], [0.0, 0.0]], 4.0) == [1, 0]


def test_times_a_rounding_error_off_whole_steps_count_as_whole_steps():
    assert spdy.solve([[0.1]] * 3, [[0.0]] * 3, 0.3, buckets=3) == [0, 0, 0]
    assert spdy.solve([[7.406]], [[0.0]], 7.406, buckets=100) == [0]
    assert spdy.solve([[1e305]], [[0.0]], 1e308) == [0]  # no overflow on the way to steps


def test_too_few_buckets_for_the_fastest_levels_say_so():
    with pytest.raises(SparsekitError, match="fastest reachable time is 2.*pass more buckets"):
        spdy.solve([[1.0], [1.0]], [[0.0], [0.0]], 2.0, buckets=3)  # each 1.0 takes 2 steps of 2/3


def test_the_cheapest_levels_that_fit_are_chosen():
    times = [[1.0, 0.5, 0.25], [2.0, 1.0, 0.5]]  # level 0 dense, then sparser and faster
    costs = [[0.0, 1.0, 4.0], [0.0, 1.0, 4.0]]
    # buckets of 0.25: every time is whole steps, so choices that fit exactly are seen
    assert spdy.solve(times, costs, 3.0, buckets=12) == [0, 0]
    assert spdy.solve(times, costs, 2.0, buckets=8) == [0, 1]
    assert spdy.solve(times, costs, 1.5, buckets=6) == [1, 1]
    # 10,000 buckets of 0.0003: rounded up, 1.0 + 2.0 takes 10,001 of them
    assert spdy.solve(times, costs, 3.0) == [0, 1]


@pytest.mark.parametrize(
    "times, costs, budget, message",
    [
        ([[1, 2]], [[1, 2, 3]], 1, "differ in shape"),
        ([[1, -2]], [[1, 2]], 1, "times must be >= 0"),
        ([[1, math.nan]], [[1, 2]], 1, "not finite"),
        ([], [], 1, "non-empty"),
        ([["a"]], [[1]], 1, "array of numbers"),
        ([[1]], [[1]], 0, "budget must be a positive number"),
        ([[1]], [[1]], "x", "budget must be a positive number"),
    ],
)
def test_bad_arguments_are_named(times, costs, budget, message):
    with pytest.raises(SparsekitError, match=message):
        spdy.solve(times, costs, budget)


@pytest.mark.parametrize("buckets", [0, 2.5, True])
def test_bad_bucket_counts_are_named(buckets):
    with pytest.raises(SparsekitError, match="buckets must be a positive int"):
        spdy.solve([[1]], [[1]], 1, buckets=buckets)
