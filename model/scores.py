"""Scores for people: accuracy percentages that never round to a false 0% or 100%, and the trivial baseline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def percent(x: float | None, digits: int = 1) -> str:
    """``x`` (a fraction) as a percentage with ``digits`` decimals, more where rounding would hide that
    it is not exactly 0 or 1: 0.0001 -> "0.01%", 0.99996 -> "99.996%", 1.0 -> "100.0%"; None/NaN -> "n/a"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    value = 100 * float(x)
    for d in range(digits, digits + 8):
        text = f"{value:.{d}f}"
        if (float(text) != 0 or value == 0) and (float(text) != 100 or value == 100):
            return text + "%"
    return f"{value:.{digits + 8}g}%"


def most_frequent_token(values: np.ndarray) -> int:
    """The most frequent token id of a flat token array (the smallest id on a tie; 0 if empty)."""
    return int(np.bincount(np.asarray(values, dtype=np.int64)).argmax()) if np.size(values) else 0


def baseline_scores(values: np.ndarray, offsets: np.ndarray, token: int) -> dict[str, Any]:
    """Scores of the trivial decoder that writes ``token`` at every position of every sequence."""
    values = np.asarray(values)
    if offsets.size < 2:
        return {"token": token, "token_accuracy": float("nan"), "exact_match": float("nan")}
    same = values == token
    wrong_per_row = np.add.reduceat(~same, offsets[:-1]) if same.size else np.zeros(0)
    return {"token": token, "token_accuracy": float(same.mean()), "exact_match": float((wrong_per_row == 0).mean())}
