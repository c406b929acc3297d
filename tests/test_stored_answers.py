"""Re-ranking and evaluation against answers the field's original code gave on the same inputs.

The answers are stored numbers, not code: tests/data/rerank_evaluation_reference.npz holds seeded inputs and what
the original k-reciprocal re-ranking (zhunzhong07/person-re-ranking), torchreid's ``eval_market1501`` and the
DG-Net reference's ``reid_eval`` evaluation returned on them (tests/data/README.md says how they were made). These
tests hold dgnet to code it shares nothing with, where tests/test_rerank.py and tests/test_evaluation.py hold the
fast paths to dgnet's own plain rewrites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgnet.evaluation.rank import evaluate, evaluate_rank
from dgnet.ops.evaluation import evaluate_queries
from dgnet.ops.rerank import re_ranking, re_ranking_features

FIXTURE = Path(__file__).parent / "data" / "rerank_evaluation_reference.npz"
METRICS = ("euclidean", "sqeuclidean", "cosine")  # every metric re_ranking_features accepts
CASES = ("small", "paper")  # k1=6, k2=3 on 6+24 samples; the paper's k1=20, k2=6, lambda=0.3 on 10+50

# Tolerance of re-ranked distances: both codes compute in float32 (the original casts the squared distances to
# float32; dgnet squares in the inputs' float64 and stores float32), on values in [0, 1]. Each output is
# 1 - s / (2 - s) mixed with the normalised distance, where s sums at most N = Q + G float32 terms of a row of V
# (which sums to 1), so each code's rounding is at most about N * 2^-24 = 60 * 6e-8 = 3.6e-6; 1e-5 bounds the
# difference of the two. A different neighbour or expansion set moves entries by a V weight, ~1/N >= 1e-2, and a
# relative error of 1e-3 on any distance above 1e-2 moves it by more than the tolerance.
RERANK_ATOL = 1e-5


@pytest.fixture(scope="module")
def answers() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as z:
        return dict(z)


def distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of float32 features: the inputs the original re-ranking was given (tests/data/README.md)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1.0 - an @ bn.T
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return sq if metric == "sqeuclidean" else np.sqrt(sq)


def _case(answers, case):
    k1, k2, lam = answers[f"rerank_{case}_params"]
    return answers[f"rerank_{case}_query"], answers[f"rerank_{case}_gallery"], int(k1), int(k2), float(lam)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", CASES)
def test_re_ranking_equals_the_original(answers, case, metric):
    q, g, k1, k2, lam = _case(answers, case)
    want = answers[f"rerank_{case}_{metric}"]
    got = re_ranking(distances(q, g, metric), distances(q, q, metric), distances(g, g, metric), k1, k2, lam)
    np.testing.assert_allclose(got, want, rtol=0, atol=RERANK_ATOL)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", CASES)
def test_re_ranking_features_equals_the_original(answers, case, metric):
    """The original was given float64 distances; re_ranking_features computes them in float32 itself (the float32
    distances' rounding, ~1e-7 relative, stays within the same tolerance on these tie-free inputs)."""
    q, g, k1, k2, lam = _case(answers, case)
    want = answers[f"rerank_{case}_{metric}"]
    np.testing.assert_allclose(re_ranking_features(q, g, k1, k2, lam, metric=metric), want, rtol=0, atol=RERANK_ATOL)
    got = re_ranking_features(torch.from_numpy(q), torch.from_numpy(g), k1, k2, lam, metric=metric)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=RERANK_ATOL)


def _torchreid(answers):
    keys = ("distmat", "q_pids", "g_pids", "q_camids", "g_camids")
    return [answers[f"torchreid_{k}"] for k in keys], int(answers["torchreid_max_rank"])


def test_evaluate_rank_equals_torchreid_eval_market1501(answers):
    """No junk identities, no distance ties, six of the sixteen queries without a true match (both skip them).
    CMC entries are counts over valid queries divided in float32 by both: equal exactly. mAP is a float64 mean
    of at most G = 80 terms of at most 1 per query: 1e-12 bounds either code's rounding."""
    args, max_rank = _torchreid(answers)
    with pytest.warns(UserWarning, match="6 of 16"):
        cmc, mAP = evaluate_rank(*args, max_rank=max_rank)
    np.testing.assert_array_equal(cmc, answers["torchreid_cmc"])
    assert mAP == pytest.approx(float(answers["torchreid_mAP"]), rel=1e-12, abs=0)
    with pytest.warns(UserWarning):
        r = evaluate(*[torch.as_tensor(a) for a in args], max_rank=max_rank)
    np.testing.assert_array_equal(r.cmc, answers["torchreid_cmc"])
    assert r.mAP == pytest.approx(float(answers["torchreid_mAP"]), rel=1e-12, abs=0)


def _dgnet_reference(answers):
    keys = ("q_pids", "g_pids", "q_camids", "g_camids")
    # The reference ranks by descending score (gallery @ query); dgnet ranks ascending distances: the negated
    # scores, exactly.
    return [-answers["dgnet_ref_score"], *(answers[f"dgnet_ref_{k}"] for k in keys)]


def test_evaluate_equals_the_dgnet_reference_evaluation(answers):
    """Junk (-1) and distractor (0) gallery identities: dgnet's trapezoidal AP and first-match rank of every query
    equal the DG-Net reference's ``compute_mAP``. The APs are float64 sums of at most G = 72 terms: 1e-12."""
    args = _dgnet_reference(answers)
    want_ap, want_first = answers["dgnet_ref_ap"], answers["dgnet_ref_first_rank"]
    r = evaluate(*args, max_rank=args[0].shape[1])
    np.testing.assert_allclose(r.ap_trapz, want_ap, rtol=1e-12, atol=0)
    assert r.mAP_trapz == pytest.approx(float(np.mean(want_ap)), rel=1e-12)
    # The reference's CMC of a query is 1 from its first true match on: dgnet's CMC is their mean.
    ranks = np.arange(1, args[0].shape[1] + 1)
    want_cmc = (want_first[:, None] <= ranks[None, :]).mean(0)
    np.testing.assert_allclose(r.cmc, want_cmc, rtol=0, atol=1e-7)  # float32 output of exact fractions
    ap, _inp, first, ap_trapz = evaluate_queries(*(torch.as_tensor(np.ascontiguousarray(a)) for a in args))
    np.testing.assert_array_equal(first.numpy(), want_first)
    np.testing.assert_allclose(ap_trapz.numpy(), want_ap, rtol=1e-12, atol=0)
