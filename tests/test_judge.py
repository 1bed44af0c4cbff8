"""Tests for srlm/judge.py: judge templates, the score parser, score aggregation and AIFT pairs.

    python -m pytest -q tests/test_judge.py
"""
import math
import random

import pytest

from srlm.io import DataError
from srlm.judge import (COMPACT_TEMPLATE, DEFAULT_TEMPLATE, aggregate_scores, build_pair,
                        check_template, judge_prompt, load_template, pairs_from_judgements,
                        parse_score, reply_view, score_histogram)

# ----------------------------------------------------------------------------- judge prompt


def test_default_template_embeds_question_and_answer_once_and_asks_for_score_line():
    text = judge_prompt("  How do magnets work?\n", "Electrons align.  ")
    assert text.count("How do magnets work?") == 1 and text.count("Electrons align.") == 1
    assert "{prompt}" not in text and "{response}" not in text
    assert "Score: <total points>" in text
    # the rubric's five additive criteria are all there
    assert all(f"Add {k}" in text for k in ("1 point", "a 2nd", "a 3rd", "a 4th", "a 5th"))
    assert judge_prompt("q", "a", None) == judge_prompt("q", "a", DEFAULT_TEMPLATE)


@pytest.mark.parametrize("reply, after, shown", [
    ("Ones 8 + 5 = 12, carry 1; tens 7 + 8 + 1 = 15. That gives 152.", "That gives ", "152"),
    # the last marker counts; the steps before it, numbers included, are not shown
    ("That gives 3. Counting again: a (1). That gives 1.", "That gives ", "1"),
    ("That gives [1, 2].  ", "That gives ", "[1, 2]"),
    ("152", "That gives ", "152"),                       # no marker: the whole reply
    ("Steps. That gives 152.", "", "Steps. That gives 152."),   # no marker asked for
    ("So the answer is 7.", "the answer is ", "7"),
])
def test_reply_view_hand_written(reply, after, shown):
    assert reply_view(reply, after) == shown
    prompt = judge_prompt("What is 78 + 85?", reply, COMPACT_TEMPLATE, reply_after=after)
    assert prompt.splitlines()[2] == f"Answer: {shown}"


def test_compact_template_fits_the_built_in_models_context():
    """Why the compact template exists: with the committed tokenizer, the judge prompt for every
    answer of the built-in IFT seed, plus the loop's judgement length (64 tokens), fits M0's context."""
    import json
    from pathlib import Path

    from srlm.io import read_jsonl
    from srlm.tokenizer import Tokenizer

    data = Path(__file__).resolve().parents[1] / "data"
    if not (data / "tokenizer.model").is_file():
        pytest.skip("data/ has not been built")
    check_template(COMPACT_TEMPLATE)
    assert judge_prompt("Q?", "A.", COMPACT_TEMPLATE).splitlines()[1:3] == ["Question: Q?", "Answer: A."]
    tok = Tokenizer(data / "tokenizer.model")
    context = json.loads((data / "m0" / "config.json").read_text())["max_position_embeddings"]
    rows = read_jsonl(data / "ift.jsonl")
    compact = [len(tok.encode_prompt(judge_prompt(r["prompt"], r["response"], COMPACT_TEMPLATE))) for r in rows]
    assert max(compact) + 64 <= context


def test_slots_are_filled_in_one_pass_and_other_braces_stay_literal():
    # A question that contains "{response}" must not be substituted again; JSON braces in a
    # user template are literal text (str.format would crash on them).
    template = 'JSON {"a": 1}\nQ={prompt}\nA={response}\n'
    text = judge_prompt("what is {response}?", "x{prompt}y", template)
    assert text == 'JSON {"a": 1}\nQ=what is {response}?\nA=x{prompt}y\n'


def test_template_without_slots_is_rejected_with_the_missing_slot_named(tmp_path):
    with pytest.raises(DataError, match=r"\{response\}"):
        judge_prompt("q", "a", "Only {prompt} here")
    bad = tmp_path / "t.txt"
    bad.write_text("no slots at all")
    with pytest.raises(DataError, match=r"t\.txt.*\{prompt\}, \{response\}"):
        load_template(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_template(str(tmp_path / "missing.txt"))
    good = tmp_path / "good.txt"
    good.write_text("Q: {prompt} A: {response}")
    assert load_template(str(good)) == "Q: {prompt} A: {response}"
    assert load_template("compact") == COMPACT_TEMPLATE and load_template(None) == DEFAULT_TEMPLATE


# ----------------------------------------------------------------------------- score parser
J = "The answer is on topic and covers the basics, but it is not well organised."

PARSE_TABLE = [
    # --- what models really write ---
    (f"{J}\nScore: 3", 3.0),
    (f"{J}\n\nScore: 4", 4.0),
    (f"{J}\nScore: 4\n", 4.0),
    (f"{J}\n**Score:** 4", 4.0),
    (f"{J}\n**Score: 4**", 4.0),
    (f"{J}\n**Score**: 2", 2.0),
    (f"{J}\nScore: **5**", 5.0),
    (f"{J}\n__Score:__ 1", 1.0),
    (f"{J}\n## Score: 3", 3.0),
    (f"{J}\n- Score: 2", 2.0),
    (f"{J}\n> Score: 2", 2.0),
    (f"{J}\nScore: 4/5", 4.0),
    (f"{J}\nScore: 4 / 5", 4.0),
    (f"{J}\nScore: 5/5.", 5.0),
    (f"{J}\nScore: 4 out of 5", 4.0),
    (f"{J}\nScore: 3 points", 3.0),
    (f"{J}\nScore: 1 point.", 1.0),
    (f"{J}\nScore: 4.0", 4.0),
    (f"{J}\nScore: 3.5", 3.5),
    (f"{J}\nScore: 4.", 4.0),
    (f"{J}\nScore: 4!", 4.0),
    (f"{J}\nScore: (4)", 4.0),
    (f"{J}\nScore: `4`", 4.0),
    (f"{J}\nScore:4", 4.0),
    (f"{J}\nscore: 2", 2.0),
    (f"{J}\nSCORE: 2", 2.0),
    (f"{J}\nScore = 2", 2.0),
    (f"{J}\nFinal score: 3", 3.0),
    (f"{J}\nTotal Score: 5", 5.0),
    (f"{J}\r\nScore: 3\r\n", 3.0),                    # CRLF
    (f"{J}\nScore: 3\u00a0", 3.0),                     # trailing no-break space
    (f"{J}\rScore: 3", 3.0),                          # old Mac line end
    (f"  Score: 2   \n{J}", 2.0),                     # score first, justification after
    ("Score: 0", 0.0),
    ("Score: 5", 5.0),
    ("Score: 05", 5.0),
    ("Score: 0.0", 0.0),
    # --- several score lines: the last one wins ---
    ("Score: 2\nOn reflection it deserves more.\nScore: 4", 4.0),
    ("Criterion 1 met.\nScore: 1\nCriterion 2 met.\nScore: 2", 2.0),
    ("Score: 5\nScore: 7", None),                     # the last line decides, even when invalid
    ("Score: four\nScore: 3", 3.0),
    # --- strict about what is invalid ---
    ("Score: 6", None),
    ("Score: 10", None),
    ("Score: 5.5", None),
    ("Score: 8/10", None),                            # another scale: refused, not rescaled
    ("Score: 4/10", None),
    ("Score: 3 out of 10", None),
    ("Score: -1", None),
    ("Score: -0", None),
    ("Score: four", None),
    ("Score: ", None),
    ("Score:", None),
    ("Score: <total points>", None),                  # the template echoed back
    ("Score: 4,5", None),
    ("Score: 4 5", None),
    ("Score: 3 because it is relevant", None),
    ("Score: 1e0", None),
    ("Score: inf", None),
    ("Score: nan", None),
    ("Score: 0x4", None),
    ("Score: \u0664", None),                          # Arabic-Indic digit four
    ("Score: \uff14", None),                          # full-width 4
    ("\u017fcore: 4", None),                          # long s: no Unicode case folding
    (J, None),                                        # no score line
    ("", None),
    ("I would give it a 4.", None),
    ("The score is 4", None),
    ("Scores: 4", None),
    ("Scoring: 4", None),
    ("Score 4", None),                                # no ':' or '='
    ("My answer would score: 4 maybe", None),
]


@pytest.mark.parametrize("text,expected", PARSE_TABLE)
def test_parse_score_table(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("value", [None, 4, 4.0, b"Score: 4", ["Score: 4"]])
def test_parse_score_non_strings_give_none(value):
    assert parse_score(value) is None


def test_parse_score_is_fast_on_pathological_lines():
    # Long runs of the characters the regexes skip must not cause quadratic backtracking.
    for text in ["Score: 4" + " " * 100_000 + "x", "*" * 100_000 + "x", "Score" + " *" * 50_000]:
        assert parse_score(text) is None


def test_parse_score_property_random_strings_never_raise_and_appended_line_wins():
    """Random strings mixing score-like pieces, markdown, digits, CR/LF and Unicode: parse_score
    returns None or a float in [0, 5], and appending "\\nScore: k" always reads back k."""
    rng = random.Random(1234)
    pieces = ["Score", "score", ":", " ", "**", "\n", "\r\n", "\r", "/", "5", "4", "10", "-", ".",
              "out of", "points", "#", "é", "\u2028", "\x00", "{", "}", "Final ", "\t", "x", "9"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.2:
            text += "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 20)))
        got = parse_score(text)
        assert got is None or (isinstance(got, float) and 0.0 <= got <= 5.0), (text, got)
        k = rng.randint(0, 5)
        assert parse_score(text + f"\nScore: {k}") == float(k), text


def test_custom_pattern_last_match_wins_and_is_range_checked():
    pat = r"Rating\s*=\s*(?P<score>-?[0-9.]+)"
    assert parse_score("Rating = 2 ... Rating = 3", pattern=pat) == 3.0
    assert parse_score("Rating = 9", pattern=pat) is None
    assert parse_score("Rating = -1", pattern=pat) is None
    assert parse_score("Rating = 1.2.3", pattern=pat) is None    # float() fails -> None
    assert parse_score("nothing", pattern=pat) is None
    assert parse_score("[[4]]", pattern=r"\[\[(\d)\]\]") == 4.0  # unnamed group 1
    with pytest.raises(ValueError, match="invalid score pattern"):
        parse_score("x", pattern="(")
    with pytest.raises(ValueError, match="capture group"):
        parse_score("x", pattern="Score")


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_scores_mean_of_valid_and_min_valid_rule():
    assert aggregate_scores([3.0, 4.0, 5.0], min_valid=1) == 4.0
    assert aggregate_scores([3.0, None, 4.0], min_valid=2) == 3.5      # (3 + 4) / 2
    assert aggregate_scores([3.0, None, None], min_valid=1) == 3.0
    assert aggregate_scores([3.0, None, None], min_valid=2) is None
    assert aggregate_scores([None, None, None], min_valid=1) is None
    assert aggregate_scores([], min_valid=1) is None
    assert aggregate_scores([0.0, 0.0], min_valid=2) == 0.0            # 0 is a valid score
    with pytest.raises(ValueError):
        aggregate_scores([1.0], min_valid=0)


# ----------------------------------------------------------------------------- pairs


def test_build_pair_chooses_best_and_worst():
    pair = build_pair("p", ["a", "b", "c", "d"], [3.0, 5.0, 1.0, 4.0], id="x")
    assert pair == {"id": "x", "prompt": "p", "chosen": "b", "rejected": "c",
                    "chosen_score": 5.0, "rejected_score": 1.0}
    assert "id" not in build_pair("p", ["a", "b"], [1.0, 2.0])


def test_build_pair_skips_ties_and_unscored():
    assert build_pair("p", ["a", "b", "c"], [4.0, 4.0, 4.0]) is None       # all tied
    assert build_pair("p", ["a", "b", "c"], [4.0, None, None]) is None     # one scored
    assert build_pair("p", [], []) is None
    # None is left out, not treated as 0: the pair is b (3) over a (2)
    pair = build_pair("p", ["a", "b", "c"], [2.0, 3.0, None])
    assert (pair["chosen"], pair["rejected"]) == ("b", "a")


def test_build_pair_min_margin():
    # best 5 and worst 4 (bare over a sentence, both right): a gap of 1, below 1.5 -> no pair
    assert build_pair("p", ["68", "The answer is 68.", "68"], [5.0, 4.0, 5.0], min_margin=1.5) is None
    # best 4.67 (mean of 5, 5, 4) against 2: a gap of 2.67 -> the pair stands
    pair = build_pair("p", ["a", "b"], [14 / 3, 2.0], min_margin=1.5)
    assert (pair["chosen"], pair["rejected"]) == ("a", "b")
    # exactly the margin is enough; 0 keeps every preference
    assert build_pair("p", ["a", "b"], [3.5, 2.0], min_margin=1.5) is not None
    assert build_pair("p", ["a", "b"], [2.1, 2.0]) is not None


def test_build_pair_tie_break_is_earliest_candidate():
    pair = build_pair("p", ["a", "b", "c", "d"], [5.0, 1.0, 5.0, 1.0])
    assert (pair["chosen"], pair["rejected"]) == ("a", "b")


def test_build_pair_never_emits_identical_texts():
    # "same" appears twice with scores 5 and 1: one answer, mean 3. Against "other" (2): chosen
    # is "same" (3 > 2), rejected "other" -- never "same" vs "same".
    pair = build_pair("p", ["same", "other", " same\n"], [5.0, 2.0, 1.0])
    assert pair["chosen"] == "same" and pair["rejected"] == "other"
    assert pair["chosen_score"] == 3.0 and pair["rejected_score"] == 2.0
    assert build_pair("p", ["same", "same "], [5.0, 1.0]) is None


def test_build_pair_leaves_out_scores_that_are_not_scores():
    # NaN compares false with everything, so max() and min() could both pick it: chosen == rejected.
    nan, inf = float("nan"), float("inf")
    assert build_pair("p", ["a", "b"], [nan, 3.0]) is None
    assert build_pair("p", ["a", "b", "c"], [nan, 3.0, nan]) is None
    pair = build_pair("p", ["a", "b", "c", "d", "e"], [nan, 3.0, inf, 1.0, 9.0])
    assert (pair["chosen"], pair["rejected"], pair["chosen_score"], pair["rejected_score"]) == ("b", "d", 3.0, 1.0)
    assert build_pair("p", ["a", "b"], [True, 0.0]) is None  # a bool is not a score


@pytest.mark.parametrize("row, key_error", [
    ({"id": "p", "candidate_index": 1, "scores": [9.0]}, r"key 'scores' holds 9\.0, which is neither null"),
    ({"id": "p", "candidate_index": 1, "scores": [float("nan")]}, r"key 'scores' holds nan"),
    ({"id": "p", "candidate_index": 1, "scores": ["4"]}, r"key 'scores' holds '4'"),
    ({"id": "p", "candidate_index": 1}, r"missing key 'scores'"),
    ({"id": "p", "candidate_index": 1, "scores": 4}, r"key 'scores' must be a list"),
    ({"id": "p", "candidate_index": "1", "scores": [4.0]}, r"key 'candidate_index' must be a whole number"),
    ({"candidate_index": 1, "scores": [4.0]}, r"missing key 'id'"),
])
def test_pairs_from_judgements_names_a_bad_reused_row(row, key_error):
    cands = [{"id": "p", "prompt": "P", "candidates": ["a", "b"]}]
    rows = [{"id": "p", "candidate_index": 0, "scores": [4.0]}, row]
    with pytest.raises(DataError, match=r"old/judgements\.jsonl: record 2.*" + key_error):
        pairs_from_judgements(cands, rows, source="old/judgements.jsonl")


def test_build_pair_length_mismatch_raises():
    with pytest.raises(ValueError):
        build_pair("p", ["a", "b"], [1.0])


def test_score_histogram_rounds_half_up():
    assert score_histogram([0.0, 0.4, 0.5, 2.49, 4.5, 5.0, None]) == \
        {"0": 2, "1": 1, "2": 1, "3": 0, "4": 0, "5": 2}


def test_pairs_from_judgements_averages_applies_min_valid_and_summarises():
    candidates = [
        {"id": "p1", "prompt": "P1", "candidates": ["a", "b", "c"]},
        {"id": "p2", "prompt": "P2", "candidates": ["d", "e"]},
        {"id": "p3", "prompt": "P3", "candidates": ["f", "g"]},
    ]
    judgements = [
        # p1: a mean (4+5+None)/2 = 4.5 ; b (2+2+3)/3 = 7/3 ; c only one valid -> dropped at min_valid 2
        {"id": "p1", "candidate_index": 0, "scores": [4.0, 5.0, None]},
        {"id": "p1", "candidate_index": 1, "scores": [2.0, 2.0, 3.0]},
        {"id": "p1", "candidate_index": 2, "scores": [0.0, None, None]},
        # p2: tie 3 vs 3 -> no pair
        {"id": "p2", "candidate_index": 0, "scores": [3.0, 3.0, 3.0]},
        {"id": "p2", "candidate_index": 1, "scores": [4.0, 2.0, 3.0]},
        # p3: g never judged (e.g. run interrupted) -> only f -> no pair
        {"id": "p3", "candidate_index": 0, "scores": [1.0, 1.0, 1.0]},
    ]
    pairs, summary = pairs_from_judgements(candidates, judgements, min_valid=2)
    assert pairs == [{"id": "p1", "prompt": "P1", "chosen": "a", "rejected": "b",
                      "chosen_score": 4.5, "rejected_score": 7 / 3}]
    assert summary["judgements"] == 18 and summary["parse_failures"] == 3
    assert math.isclose(summary["parse_failure_rate"], 3 / 18)
    assert summary["candidates"] == 7 and summary["unjudged_candidates"] == 1
    assert summary["candidates_dropped_min_valid"] == 1
    assert summary["pairs"] == 1 and summary["prompts_without_pair"] == 2
    # parsed scores 4,5,2,2,3,0,3,3,3,4,2,3,1,1,1 -> histogram by whole point
    assert summary["score_histogram"] == {"0": 1, "1": 3, "2": 3, "3": 5, "4": 2, "5": 1}

    # with min_valid=1, c (score 0) is kept and becomes the rejected answer of p1
    pairs, _ = pairs_from_judgements(candidates, judgements, min_valid=1)
    assert (pairs[0]["chosen"], pairs[0]["rejected"], pairs[0]["rejected_score"]) == ("a", "c", 0.0)
