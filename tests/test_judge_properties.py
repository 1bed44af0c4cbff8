"""Property tests (hypothesis) of srlm/judge.py: the score parser, build_pair, pairs_from_judgements.

    python -m pytest -q tests/test_judge_properties.py

Hypothesis is a test-only extra (requirements-test.txt); without it this file is skipped. The
hand-written cases of the same functions are in tests/test_judge.py.
"""
import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from srlm.io import DataError  # noqa: E402
from srlm.judge import MAX_SCORE, build_pair, is_score, pairs_from_judgements, parse_score  # noqa: E402

FAST = settings(max_examples=300, deadline=None, derandomize=True)  # same examples every run

# Text made mostly of the pieces a score line is built from, so that near-misses are common.
PIECES = st.sampled_from(["Score", "score", "Final ", "Total ", ":", "=", " ", "**", "__", "#", "\n",
                          "\r\n", "\r", "/", "out of", "points", "0", "4", "5", "5.0", "6", "10",
                          "-", ".", "é", "\u2028", "\x00", "٤", "x"])
TEXT = st.one_of(st.text(max_size=60), st.lists(PIECES, max_size=30).map("".join))
# Anything a caller could pass as a score: None, any float (NaN, inf, -0.0, huge), ints, bools.
SCORE = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10),
                  st.booleans())


@FAST
@given(TEXT)
def test_parse_score_never_raises_and_stays_in_range(text):
    got = parse_score(text)
    assert got is None or (type(got) is float and 0.0 <= got <= MAX_SCORE), (text, got)


@FAST
@given(TEXT, st.integers(0, 5))
def test_a_last_score_line_always_decides(text, k):
    assert parse_score(f"{text}\nScore: {k}") == float(k)
    assert parse_score(f"{text}\n**Score:** {k}/5.") == float(k)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", " a", "b\n", "", " "]), SCORE), max_size=8))
def test_build_pair_chosen_differs_from_rejected_and_scores_are_in_range(cands):
    texts, scores = [t for t, _ in cands], [s for _, s in cands]
    pair = build_pair("p", texts, scores)
    usable = {t.strip() for t, s in cands if is_score(s)}
    if pair is None:
        return
    assert len(usable) >= 2
    assert pair["chosen"].strip() != pair["rejected"].strip()
    assert 0.0 <= pair["rejected_score"] < pair["chosen_score"] <= MAX_SCORE
    assert not any(math.isnan(pair[k]) for k in ("chosen_score", "rejected_score"))


@FAST
@given(st.lists(SCORE, min_size=1, max_size=3))
def test_pairs_from_judgements_accepts_valid_rows_and_names_bad_ones(scores):
    cands = [{"id": "p", "prompt": "P", "candidates": ["a", "b"]}]
    rows = [{"id": "p", "candidate_index": 0, "scores": [4.0]},
            {"id": "p", "candidate_index": 1, "scores": scores}]
    if all(s is None or is_score(s) for s in scores):
        pairs, summary = pairs_from_judgements(cands, rows)
        assert summary["judgements"] == 1 + len(scores)
        for pair in pairs:
            assert pair["chosen"] != pair["rejected"]
    else:
        with pytest.raises(DataError, match=r"j\.jsonl: record 2 \(id 'p'\): key 'scores' holds"):
            pairs_from_judgements(cands, rows, source="j.jsonl")
