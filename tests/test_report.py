"""Tests for srlm/report.py: mean and spread over seeds, and when a gain counts as shown.

    python -m pytest -q tests/test_report.py
"""
import json
import math

import pytest

from srlm import report
from srlm.io import DataError


def test_mean_std_hand_computed():
    # mean of 1, 2, 3, 6 = 3; squared deviations 4 + 1 + 0 + 9 = 14; sample variance 14 / 3
    mean, std = report.mean_std([1, 2, 3, 6])
    assert mean == 3 and std == pytest.approx(math.sqrt(14 / 3))
    assert report.mean_std([4.0]) == (4.0, 0.0)


def test_gain_shown_only_when_every_seed_gains_beyond_the_spread():
    # gains 0.10, 0.12, 0.08 (mean 0.10); spread at M1: std(0.30, 0.32, 0.28) = 0.02 -> shown
    v = report.gain_verdict([0.30, 0.32, 0.28], [0.40, 0.44, 0.36])
    assert v["gains"] == pytest.approx([0.10, 0.12, 0.08]) and v["shown"]
    # one seed loses: not shown, however large the mean
    assert not report.gain_verdict([0.3, 0.3, 0.3], [0.6, 0.6, 0.29])["shown"]
    # every seed gains 0.01 but the seeds differ by ~0.1 at M1: within the spread, not shown
    assert not report.gain_verdict([0.2, 0.3, 0.4], [0.21, 0.31, 0.41])["shown"]
    assert not report.gain_verdict([0.2], [0.5])["shown"]           # one seed shows nothing


def test_seeds_table_from_results_files(tmp_path):
    def result(ac1, ac3, pairs):
        m = lambda ac: {"instruction_following": {"answer_correct": ac, "exact_accuracy": ac / 2, "mean_grade": 3.0},
                        "reward_modelling": {"pairwise_accuracy": 0.5, "right_over_wrong": 0.4},
                        "own_samples": {"auc": 0.6, "sampled_answer_correct": ac}}
        return {"m1": m(ac1), "m2": {**m(ac1), "data": {"pairs_vs_grader": pairs}},
                "m3": {**m(ac3), "data": {"pairs_vs_grader": pairs}}}
    pairs = {"right_wrong": 5, "wrong_right": 1, "both_right": 2, "both_wrong": 0, "ungraded": 3}
    dirs = []
    for i, (a, b) in enumerate([(0.30, 0.40), (0.32, 0.44), (0.28, 0.36)]):
        d = tmp_path / f"s{i}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(result(a, b, pairs)))
        dirs.append(d)
    table = report.main([str(d) for d in dirs])
    row = next(line for line in table.splitlines() if line.startswith("| answer-correct"))
    assert "| 30.0 ± 2.0 |" in row and "| 40.0 ± 4.0 |" in row and "+10.0, +12.0, +8.0" in row and row.endswith("| yes |")
    more = next(line for line in table.splitlines() if line.startswith("| answer-correct, more prompts"))
    assert more.endswith("| – | – |")                                 # these results have no second set
    flat = next(line for line in table.splitlines() if line.startswith("| judge AUC"))
    assert flat.endswith("| no |")                                   # 0.6 -> 0.6: no gain
    assert "| into M3 | 15 | 3 | 6 | 0 | 9 |" in table
    with pytest.raises(DataError, match=r"missing/results\.json: no results\.json"):
        report.main([str(tmp_path / "missing")])
