"""The benchmarks' design: the order of interleaved runs, and the interval of a median ratio."""

from __future__ import annotations

import itertools

import pytest

from bench.common import median_interval, rounds

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
