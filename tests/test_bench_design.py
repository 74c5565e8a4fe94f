"""The benchmarks' design: the order of interleaved runs, the interval of a median ratio, and the
comparison of every pair of contenders."""

from __future__ import annotations

import itertools

import pytest

from bench.common import median_interval, rounds
from bench.train_pairs import pairwise

CONTENDERS = ["ddipp_2", "torchrun_2", "single_1", "single_all"]


def test_no_contender_always_runs_after_the_same_one():
    # What ran just before moves a run's speed: a fixed succession (a rotated order) would
    # favour one contender in every round.
    order = list(itertools.chain.from_iterable(rounds(CONTENDERS, 15)))
    predecessors = {name: set() for name in CONTENDERS}
    for before, name in itertools.pairwise(order):
        predecessors[name].add(before)
    assert order.count("ddipp_2") == 15
    assert all(found >= set(CONTENDERS) - {name} for name, found in predecessors.items()), predecessors


def test_the_order_is_the_same_in_every_run():
    assert list(rounds(CONTENDERS, 5)) == list(rounds(CONTENDERS, 5))


def test_the_interval_of_a_median_is_the_binomial_order_statistics():
    # P(Binomial(15, 1/2) < 4) = 1.8 % (< 4: the 4th smallest and largest, 96.5 %);
    # P(Binomial(11, 1/2) < 3) = 3.3 % (> 2.5 %: the 2nd, 96.1 %); 6 values: the extremes.
    assert median_interval([float(v) for v in range(15, 0, -1)]) == [4.0, 12.0]
    assert median_interval([float(v) for v in range(1, 12)]) == [2.0, 10.0]
    assert median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == [1.0, 6.0]
    with pytest.raises(ValueError, match="too few"):
        median_interval([1.0, 2.0, 3.0, 4.0, 5.0])


def test_every_pair_is_compared_round_by_round():
    # The machine's speed moves from round to round; within a round "slow" runs at 0.9 of "fast".
    machine = [15_000.0, 18_000.0, 13_000.0, 17_000.0, 14_000.0, 16_000.0]
    samples = {
        "slow": [{"samples_per_s": 0.9 * speed, "cpu_s": 1.0} for speed in machine],
        "fast": [{"samples_per_s": speed, "cpu_s": 1.0} for speed in machine],
        "same": [{"samples_per_s": speed, "cpu_s": 1.0} for speed in machine],
    }
    pairs = pairwise(samples)
    assert list(pairs) == ["slow/fast", "slow/same", "fast/same"]
    assert pairs["slow/fast"]["ratio_median"] == pytest.approx(0.9)
    assert pairs["slow/fast"]["ratio_ci95"] == pytest.approx([0.9, 0.9])
    assert pairs["slow/fast"]["rounds_slower"] == 6
    assert pairs["fast/same"]["ratio_median"] == pytest.approx(1.0)
    assert pairs["fast/same"]["rounds_slower"] == 0
