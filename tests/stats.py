"""Goodness-of-fit helpers for sampler tests, with their false-alarm rates stated."""

from __future__ import annotations

import numpy as np
from scipy import stats

# Each chi-square test rejects a correct sampler with probability ALPHA. With fixed seeds the
# outcome is deterministic; ALPHA bounds how likely a given seed was to be an unlucky one.
ALPHA = 1e-4


def chi_square_p_value(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """p-value of observed ``counts`` under ``probs`` (float64), merging bins expected < 5.

    Bins with probability 0 must have count 0 (else p = 0): a draw of an impossible id
    is an immediate failure, not a statistical question.
    """
    counts = np.asarray(counts, np.float64)
    probs = np.asarray(probs, np.float64)
    if np.any(counts[probs == 0] > 0):
        return 0.0
    keep = probs > 0
    counts, probs = counts[keep], probs[keep] / probs[keep].sum()
    expected = counts.sum() * probs
    order = np.argsort(expected)
    merged_obs, merged_exp, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order:  # merge the smallest bins together until each expects >= min_expected
        acc_o += counts[i]
        acc_e += expected[i]
        if acc_e >= min_expected:
            merged_obs.append(acc_o)
            merged_exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 and merged_exp:
        merged_obs[-1] += acc_o
        merged_exp[-1] += acc_e
    if len(merged_exp) < 2:
        return 1.0
    return float(stats.chisquare(merged_obs, merged_exp).pvalue)


def softmax64(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z[np.isfinite(z)].max()
    e = np.where(np.isfinite(z), np.exp(z), 0.0)
    return e / e.sum()
