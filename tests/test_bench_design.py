"""The benchmarks' design: the order of interleaved runs, and the interval of a median ratio."""

from __future__ import annotations

import itertools
import statistics

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


def test_the_interval_of_a_median_holds_it_and_narrows_with_more_rounds():
    ratios = [0.90, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 1.01, 1.04]
    low, high = median_interval(ratios)
    assert min(ratios) <= low < statistics.median(ratios) < high <= max(ratios)
    wide = high - low
    low, high = median_interval(ratios * 4)
    assert high - low < wide
