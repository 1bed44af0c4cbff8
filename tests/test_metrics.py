"""Tests for srlm/metrics.py: reward-model metrics against hand-computed values and scipy.

    python -m pytest -q tests/test_metrics.py
"""
import math
import warnings

import numpy as np
import pytest

from srlm.metrics import (average_ranks, format_metrics, kendall_tau_b, pair_counts,
                          reward_model_metrics, spearman)


def test_average_ranks_share_the_mean_position_on_ties():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([7, 7, 7]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]


def test_spearman_with_ties_by_hand():
    """x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4].
    Centred (mean 2.5): dx = [-1.5, 0, 0, 1.5], dy = [-1.5, .5, -.5, 1.5].
    sum dx*dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5  ->  rho = 4.5 / sqrt(22.5) = 3 / sqrt(10)."""
    assert math.isclose(spearman([1, 2, 2, 3], [1, 3, 2, 4]), 3 / math.sqrt(10))
    assert math.isclose(spearman([1, 2, 3], [3, 2, 1]), -1.0)
    assert math.isnan(spearman([4, 4, 4], [1, 2, 3]))


def test_kendall_tau_b_with_ties_by_hand():
    """x = [1, 2, 2, 3], y = [1, 3, 2, 4]: of the 6 pairs, 5 are concordant, 0 discordant and
    one, (1, 2), is tied in x. tau-b = (5 - 0) / sqrt((6 - 1) * (6 - 0)) = 5 / sqrt(30)."""
    assert math.isclose(kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]), 5 / math.sqrt(30))
    # two ties on each side: x=[1,1,2,2], y=[1,2,2,3]: pairs (0,1) x-tie, (2,3) x-tie,
    # (1,2) y-tie, (0,2),(0,3),(1,3) concordant: 3 / sqrt((6-2)(6-1)) = 3 / sqrt(20)
    assert math.isclose(kendall_tau_b([1, 1, 2, 2], [1, 2, 2, 3]), 3 / math.sqrt(20))
    assert math.isnan(kendall_tau_b([1, 2], [5, 5]))


def test_pair_counts_human_ties_excluded_judge_ties_separate():
    # ranks [0, 0, 1]: pair (0,1) is a human tie -> not counted.
    # (0,2): reply 0 better, scores 3 < 4 -> disagree; (1,2): 5 > 4 -> agree.
    assert pair_counts([0, 0, 1], [3, 5, 4]) == (1, 0, 1)
    assert pair_counts([0, 1, 2], [4, 4, 1]) == (2, 1, 0)


GROUPS = [
    {"ranks": [0, 1, 2], "scores": [5, 3, 4]},      # G1: 2 of 3 pairs, not exact, 5-best
    {"ranks": [0, 1], "scores": [4, 4]},            # G2: a judge tie counts as not agreeing
    {"ranks": [0, 1, 2], "scores": [5, None, 2]},   # G3: unscored reply left out -> [0,2] vs [5,2]
    {"ranks": [0, 1], "scores": [None, 3]},         # G4: one scored reply -> group skipped
    {"ranks": [0, 0, 1], "scores": [3, 5, 4]},      # G5: human tie at the top
]


def test_reward_model_metrics_hand_computed():
    """Per group (agree/pairs, exact, 5-best, rho, tau):
    G1 ranks [0,1,2] scores [5,3,4]: 2/3, no, yes; rho = 1 - 6*(0+1+1)/(3*8) = 0.5; tau = (2-1)/3.
    G2 [0,1] [4,4]: 0/1 (tie), no, no (4 < 5); constant scores -> rho = tau = 0 by convention.
    G3 -> [0,2] [5,2]: 1/1, yes, yes, rho = tau = 1.
    G4 skipped. G5 [0,0,1] [3,5,4]: 1/2, no; 5-best no (a best reply scored 3);
      quality ranks [2.5,2.5,1], score ranks [1,3,2]: rho = 0; tau = (-1 + 1) / sqrt(2*3) = 0.
    Totals: pairs 3+1+1+2 = 7, agree 4, judge ties 1; groups 4; exact 1/4; 5-best 2/4;
    spearman (0.5+0+1+0)/4 = 0.375; kendall (1/3+0+1+0)/4 = 1/3; unscored 2 (G3, G4)."""
    m = reward_model_metrics(GROUPS)
    assert m["pairs"] == 7 and m["groups"] == 4 and m["groups_skipped"] == 1
    assert m["replies_unscored"] == 2
    assert math.isclose(m["pairwise_accuracy"], 4 / 7)
    assert math.isclose(m["judge_tie_rate"], 1 / 7)
    assert math.isclose(m["exact_match"], 1 / 4)
    assert math.isclose(m["five_best"], 2 / 4)
    assert math.isclose(m["spearman"], 0.375)
    assert math.isclose(m["kendall_tau"], 1 / 3)


def test_perfect_and_constant_judges():
    perfect = reward_model_metrics([{"ranks": [0, 1, 2], "scores": [5, 4, 1]},
                                    {"ranks": [1, 0], "scores": [2.5, 5.0]}])
    assert perfect["pairwise_accuracy"] == 1 and perfect["exact_match"] == 1
    assert perfect["five_best"] == 1 and perfect["judge_tie_rate"] == 0
    assert math.isclose(perfect["spearman"], 1) and math.isclose(perfect["kendall_tau"], 1)
    constant = reward_model_metrics([{"ranks": [0, 1, 2], "scores": [4, 4, 4]}])
    assert constant["pairwise_accuracy"] == 0 and constant["judge_tie_rate"] == 1
    assert constant["exact_match"] == 0 and constant["five_best"] == 0
    assert constant["spearman"] == 0 and constant["kendall_tau"] == 0
    # a judge scoring everything 5 gets 5-best 100% but no pairwise credit
    all5 = reward_model_metrics([{"ranks": [0, 1], "scores": [5, 5]}])
    assert all5["five_best"] == 1 and all5["pairwise_accuracy"] == 0


def test_no_usable_group_gives_nan_and_bad_group_raises():
    m = reward_model_metrics([{"ranks": [0, 0], "scores": [1, 2]}])   # human tie only
    assert m["groups"] == 0 and m["groups_skipped"] == 1 and math.isnan(m["pairwise_accuracy"])
    with pytest.raises(ValueError, match="2 ranks but 3 scores"):
        reward_model_metrics([{"ranks": [0, 1], "scores": [1, 2, 3]}])


def test_format_metrics_prints_the_paper_rows():
    text = format_metrics(reward_model_metrics(GROUPS), title="M1")
    assert "| pairwise accuracy | 57.1% |" in text and "| Spearman corr. | 0.375 |" in text
    assert "| metric | M1 |" in text and "4 groups" in text


def test_correlations_match_scipy_on_random_groups_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    rhos, taus = [], []
    for _ in range(300):
        n = int(rng.integers(2, 9))
        ranks = rng.integers(0, 4, size=n)                     # human ranks with ties
        scores = rng.integers(0, 6, size=n).astype(float)      # whole-point judge scores
        if rng.random() < 0.3:
            scores = scores + rng.choice([0.0, 1 / 3, 2 / 3], size=n)   # averaged scores
        quality = -ranks
        ours_rho, ours_tau = spearman(scores, quality), kendall_tau_b(scores, quality)
        with warnings.catch_warnings():   # scipy warns on constant input (we expect nan there)
            warnings.simplefilter("ignore")
            ref_rho = stats.spearmanr(scores, quality).statistic
            ref_tau = stats.kendalltau(scores, quality).statistic
        if np.isnan(ref_rho):
            assert math.isnan(ours_rho) and math.isnan(ours_tau)
            continue
        assert math.isclose(ours_rho, ref_rho, abs_tol=1e-12)
        assert math.isclose(ours_tau, ref_tau, abs_tol=1e-12)
        rhos.append(ours_rho)
        taus.append(ours_tau)
    assert len(rhos) > 100   # most random groups were compared, not skipped


def test_correctness_metrics_hand_computed():
    """Two groups. Group 1: right scores [5, 3], wrong [2, 3]: pairs (5>2) win, (5>3) win, (3>2) win,
    (3=3) tie -> 3 wins, 1 tie of 4. Group 2: right [4], wrong [4, None]: the unscored wrong reply is
    left out -> (4=4) tie. Group 3 has no wrong reply: not counted.
    right_over_wrong = 3 / 5 (ties miss); auc = (3 + 0.5 * 2) / 5 = 0.8."""
    from srlm.metrics import correctness_metrics
    groups = [{"correct": [True, False, True, False], "scores": [5, 2, 3, 3]},
              {"correct": [True, False, False], "scores": [4, 4, None]},
              {"correct": [True, True, None], "scores": [1, 2, 0]}]
    m = correctness_metrics(groups)
    assert m["right_over_wrong"] == pytest.approx(3 / 5) and m["auc"] == pytest.approx(0.8)
    assert m["groups"] == 2 and m["pairs"] == 5


def test_correctness_auc_matches_mann_whitney_on_random_groups():
    """Pooled over groups, the AUC is the Mann-Whitney U of each group (ties 1/2) over its pairs,
    checked here against scipy's mannwhitneyu per group."""
    stats = pytest.importorskip("scipy.stats")
    from srlm.metrics import correctness_metrics
    rng = np.random.default_rng(0)
    groups, u_total, n_total = [], 0.0, 0
    for _ in range(30):
        correct = [bool(c) for c in rng.integers(0, 2, size=6)]
        scores = [float(s) for s in rng.integers(0, 6, size=6)]
        groups.append({"correct": correct, "scores": scores})
        right = [s for c, s in zip(correct, scores) if c]
        wrong = [s for c, s in zip(correct, scores) if not c]
        if right and wrong:
            u_total += stats.mannwhitneyu(right, wrong).statistic
            n_total += len(right) * len(wrong)
    assert correctness_metrics(groups)["auc"] == pytest.approx(u_total / n_total)
    with pytest.raises(ValueError):
        correctness_metrics([{"correct": [True], "scores": [1, 2]}])
