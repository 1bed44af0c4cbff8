"""Reward-model metrics: how well judge scores agree with human rankings of sibling replies.

The paper (Yuan et al. 2024, table "reward modeling") scores a judge on held-out Open Assistant
groups: one prompt, several replies that humans ranked (rank 0 = best). For each group the
judge gives every reply a score in [0, 5] (higher = better). We report, written with numpy only:

- pairwise accuracy: over all reply pairs that humans ranked differently (pooled over groups),
  the share where the human-preferred reply gets the strictly higher judge score.
- exact match: share of groups in which every such pair is ordered correctly (the judge
  reproduces the whole human order).
- 5-best: share of groups in which the reply humans ranked best gets the top score, 5.
- Spearman and Kendall tau (tau-b): per-group rank correlation between judge scores and human
  quality (= minus the human rank, so +1 is perfect agreement), averaged over groups.

Tie handling (the paper does not say; our decisions):
- Human ties: pairs that humans ranked equally are not counted in pairwise accuracy and do not
  constrain exact match. If several replies share the best human rank, 5-best needs all of them
  to score 5.
- Judge ties on a pair that humans ranked differently count as NOT agreeing (0, not 1/2): a
  judge that scores everything 4 gets 0% pairwise accuracy, not 50%. The share of such pairs is
  reported separately as `judge_tie_rate`.
- Correlations use average ranks for ties (Spearman = Pearson on average ranks; Kendall tau-b),
  which is what scipy.stats.spearmanr / kendalltau compute. A group where the judge gives all
  replies the same score has an undefined correlation (scipy: nan); we count it as 0 ("no
  agreement"), so constant judges cannot hide by being skipped.
- A reply without a valid judge score is left out of its group (`replies_unscored` counts them);
  a group needs at least two scored replies with different human ranks, else it is skipped
  (`groups_skipped`). With averaged scores (K judgements), 5-best needs a mean of exactly 5.

    from srlm.metrics import reward_model_metrics
    m = reward_model_metrics([{"ranks": [0, 1, 2], "scores": [5, 3, 4]}])
    # pairwise 2/3, exact 0, 5-best 1, spearman 0.5, kendall 1/3

Tests: `python -m pytest -q tests/test_metrics.py`.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

MAX_SCORE = 5.0


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of x in ascending order; tied values share the mean of their positions.

    average_ranks([10, 20, 20, 5]) -> [2, 3.5, 3.5, 1]
    """
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1  # mean of positions start+1..end+1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho with average ranks for ties; nan when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else math.nan


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (C - D) / sqrt((n0 - tx) (n0 - ty)); nan when either side is constant.

    C / D = concordant / discordant pairs, n0 = n(n-1)/2, tx / ty = pairs tied in x / in y.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    iu = np.triu_indices(n, k=1)                        # every pair i < j once
    sx = np.sign(x[:, None] - x[None, :])[iu]           # (n(n-1)/2,)
    sy = np.sign(y[:, None] - y[None, :])[iu]
    n0 = n * (n - 1) / 2
    tx, ty = float((sx == 0).sum()), float((sy == 0).sum())
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return float((sx * sy).sum() / denom) if denom > 0 else math.nan


def pair_counts(ranks: Sequence[float], scores: Sequence[float]) -> tuple[int, int, int]:
    """(agree, judge_ties, disagree) over pairs of replies that humans ranked differently."""
    r, s = np.asarray(ranks, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    iu = np.triu_indices(len(r), k=1)
    human = np.sign(r[None, :] - r[:, None])[iu]        # +1: reply i ranked better than j
    judge = np.sign(s[:, None] - s[None, :])[iu]        # +1: reply i scored higher than j
    ranked = human != 0
    agree = int(((human == judge) & ranked).sum())
    ties = int(((judge == 0) & ranked).sum())
    return agree, ties, int(ranked.sum()) - agree - ties


def reward_model_metrics(groups: Iterable[dict]) -> dict:
    """Metrics over groups {"ranks": [human rank, lower = better], "scores": [judge score | None]}.

    Returns the five metrics as fractions in [0, 1] (correlations in [-1, 1]; nan when no group
    is usable) plus counts: groups, groups_skipped, replies_unscored, pairs, judge_tie_rate.
    """
    agree = ties = pairs = exact = five_best = used = skipped = unscored = 0
    rhos, taus = [], []
    for g in groups:
        ranks, scores = list(g["ranks"]), list(g["scores"])
        if len(ranks) != len(scores):
            raise ValueError(f"group has {len(ranks)} ranks but {len(scores)} scores")
        keep = [i for i, s in enumerate(scores) if s is not None]
        unscored += len(scores) - len(keep)
        r = np.asarray([ranks[i] for i in keep], dtype=np.float64)
        s = np.asarray([scores[i] for i in keep], dtype=np.float64)
        if len(keep) < 2 or np.all(r == r[0]):
            skipped += 1
            continue
        used += 1
        a, t, d = pair_counts(r, s)
        agree, ties, pairs = agree + a, ties + t, pairs + a + t + d
        exact += (t == 0 and d == 0)
        five_best += bool(np.all(s[r == r.min()] >= MAX_SCORE))
        quality = -r
        rho, tau = spearman(s, quality), kendall_tau_b(s, quality)
        rhos.append(0.0 if math.isnan(rho) else rho)    # constant judge scores -> 0
        taus.append(0.0 if math.isnan(tau) else tau)
    return {
        "pairwise_accuracy": agree / pairs if pairs else math.nan,
        "five_best": five_best / used if used else math.nan,
        "exact_match": exact / used if used else math.nan,
        "spearman": float(np.mean(rhos)) if rhos else math.nan,
        "kendall_tau": float(np.mean(taus)) if taus else math.nan,
        "judge_tie_rate": ties / pairs if pairs else math.nan,
        "groups": used,
        "groups_skipped": skipped,
        "replies_unscored": unscored,
        "pairs": pairs,
    }


def correctness_metrics(groups: Iterable[dict]) -> dict:
    """How well judge scores separate right replies from wrong ones, within each group.

    groups: {"correct": [bool | None], "scores": [judge score | None]}; replies whose correctness
    is unknown (None) or whose score did not parse (None) are left out. Over every (right, wrong)
    pair of one group:

    - right_over_wrong: share of pairs where the right reply scores strictly higher (a judge tie
      counts as a miss, as in pairwise accuracy);
    - auc: the same with a tie counted as one half: the within-group ROC AUC (Mann-Whitney U / n
      pairs, pooled over groups); 0.5 is a judge that cannot tell right from wrong.

    Only groups that hold at least one scored right and one scored wrong reply count ("groups").

        correctness_metrics([{"correct": [True, False, False], "scores": [5, 2, 5]}])
        # pairs (5 vs 2) win, (5 vs 5) tie -> right_over_wrong 1/2, auc 3/4
    """
    wins = ties = pairs = used = 0
    for g in groups:
        correct, scores = list(g["correct"]), list(g["scores"])
        if len(correct) != len(scores):
            raise ValueError(f"group has {len(correct)} correctness flags but {len(scores)} scores")
        right = [s for c, s in zip(correct, scores) if c is True and s is not None]
        wrong = [s for c, s in zip(correct, scores) if c is False and s is not None]
        if not right or not wrong:
            continue
        used += 1
        for r in right:
            for w in wrong:
                pairs += 1
                wins += r > w
                ties += r == w
    return {"right_over_wrong": wins / pairs if pairs else math.nan,
            "auc": (wins + 0.5 * ties) / pairs if pairs else math.nan,
            "groups": used, "pairs": pairs}


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{v * 100:.1f}%"     # None / nan: no usable group


def _num(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def format_metrics(metrics: dict, title: str = "judge") -> str:
    """A small markdown table in the layout of the paper's reward-modelling table."""
    rows = [("pairwise accuracy", "pairwise_accuracy", True), ("5-best %", "five_best", True),
            ("exact match %", "exact_match", True), ("Spearman corr.", "spearman", False),
            ("Kendall tau", "kendall_tau", False)]
    lines = [f"| metric | {title} |", "|---|---|"]
    for label, key, percent in rows:
        v = metrics[key]
        lines.append(f"| {label} | {_pct(v) if percent else _num(v)} |")
    lines.append(f"({metrics['groups']} groups, {metrics['pairs']} ranked pairs, "
                 f"judge ties {_pct(metrics['judge_tie_rate'])} of pairs, "
                 f"{metrics['replies_unscored']} unscored replies, "
                 f"{metrics['groups_skipped']} groups skipped)")
    return "\n".join(lines)
