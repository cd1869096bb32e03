"""Percentages that never round to a false 0% or 100%, the most-frequent-token baseline, training hints."""

import math

import numpy as np
import pytest

from seqcodec.model.scores import baseline_scores, most_frequent_token, percent
from seqcodec.model.train import hints


@pytest.mark.parametrize(
    "x, text",
    [(0.0, "0.0%"), (1.0, "100.0%"), (0.5, "50.0%"), (0.0001, "0.01%"), (0.9996, "99.96%"), (0.99996, "99.996%"),
     (0.000004, "0.0004%"), (0.991604, "99.2%"), (None, "n/a"), (math.nan, "n/a"), (0.12345, "12.3%")],
)  # fmt: skip
def test_percent_never_hides_a_small_difference_from_0_or_100(x, text):
    assert percent(x) == text


def test_percent_digits():
    assert percent(0.991604, 2) == "99.16%"
    assert percent(0.99999, 2) == "99.999%"


def test_baseline_writes_the_most_frequent_token_everywhere():
    values = np.array([2, 2, 2, 1, 2, 3, 2], dtype=np.int64)
    offsets = np.array([0, 2, 5, 7])  # rows: [2 2], [2 1 2], [3 2]
    assert most_frequent_token(values) == 2
    scores = baseline_scores(values, offsets, 2)
    assert scores["token"] == 2
    assert scores["token_accuracy"] == pytest.approx(5 / 7)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert most_frequent_token(np.array([4, 1, 1, 4])) == 1  # smallest id on a tie


def _metrics(**changes) -> dict:
    metrics = {"test": {"token_accuracy": 0.45, "exact_match": 0.3}, "train": {"token_accuracy": 0.5},
               "baseline": {"token_accuracy": 0.06}, "stopped_by_time_budget": False, "best_epoch": 3,
               "epochs_run": 10}
    metrics.update(changes)
    return metrics


def test_hints_say_where_a_run_stands():
    assert hints(_metrics()) == []
    budget = hints(_metrics(stopped_by_time_budget=True, best_epoch=10))
    assert len(budget) == 1 and "--time-budget" in budget[0] and "best epoch 10 of 10" in budget[0]
    assert hints(_metrics(stopped_by_time_budget=True, best_epoch=4)) == []  # had stopped improving
    weak = hints(_metrics(test={"token_accuracy": 0.1, "exact_match": 0.0}, train={"token_accuracy": 0.12}))
    assert len(weak) == 1 and "most frequent token (6.0%)" in weak[0]
    memorizes = hints(_metrics(train={"token_accuracy": 0.9}))
    assert len(memorizes) == 1 and "memorizes" in memorizes[0]
