"""Tests for srlm/world.py (task generator, parser, 0-5 grader) and the committed data/ files.

Answers are checked against an independent solver written here with plain string operations on
the prompt text (no use of srlm.world's parser or solvers); grader scores against hand-written
responses whose expected score is worked out in the comments, criterion by criterion.

    python -m pytest -q tests/test_world.py
"""
import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from srlm.world import (FAMILIES, FAMILY_NAMES, STYLES, WORDS, answer_correct, candidates, comparison, criteria,
                        conclusion, crossed_replies, grade, grade_prompt, is_exact, judgement_text, make_task, near_miss, parse_task, slipped_working,
                        reply_answer, working, WRONG,
                        response_of_quality, responses_of_each_quality, sample_task)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


# ----------------------------------------------------------------------------- independent solver

def solve_from_text(prompt: str) -> str:
    """Recompute the answer from the prompt text alone, with plain Python."""
    quoted = re.findall(r'"([^"]*)"', prompt)
    bracket = re.search(r"\[[^\]]*\]", prompt)
    items = json.loads(bracket.group(0)) if bracket else None
    nums = [int(x) for x in re.findall(r"\d+", prompt)]
    if prompt.startswith("What is") and " + " in prompt or prompt.startswith("Add "):
        return str(nums[0] + nums[1])
    if prompt.startswith("What is") and " - " in prompt:
        return str(nums[0] - nums[1])
    if prompt.startswith("Subtract "):                     # "Subtract b from a."
        return str(nums[1] - nums[0])
    if prompt.startswith("What is") and " * " in prompt or prompt.startswith("Multiply "):
        return str(nums[0] * nums[1])
    if "backwards" in prompt or prompt.startswith("Reverse"):
        return quoted[0][::-1]
    if "uppercase" in prompt or "capital letters" in prompt:
        return quoted[0].upper()
    if "times does the letter" in prompt:
        return str(quoted[1].count(quoted[0]))
    if "letters are in the word" in prompt:
        return str(len(quoted[0]))
    if "How many numbers" in prompt:
        return str(len(items))
    if prompt.startswith("Sort"):
        return "[" + ", ".join(map(str, sorted(items))) + "]"
    if "largest" in prompt:
        return str(max(items))
    if "smallest" in prompt:
        return str(min(items))
    raise AssertionError(f"test solver does not know {prompt!r}")


def test_every_family_answer_matches_independent_solver():
    rng = random.Random(123)
    seen = Counter()
    for _ in range(1500):
        task = sample_task(rng)
        seen[task.family] += 1
        assert task.answer == solve_from_text(task.prompt), task
    assert set(seen) == set(FAMILY_NAMES)                 # every family was exercised
    assert min(seen.values()) > 50


def test_hand_computed_answers():
    # 37 + 48 = 85; 90 - 17 = 73; 7 * 8 = 56; "garden" backwards; "banana" has three a's.
    assert make_task("add", (37, 48)).answer == "85"
    assert make_task("sub", (90, 17), 1).prompt == "Subtract 17 from 90."
    assert make_task("sub", (90, 17), 1).answer == "73"
    assert make_task("mul", (7, 8)).answer == "56"
    assert make_task("reverse", ("garden",)).answer == "nedrag"
    assert make_task("upper", ("river",)).answer == "RIVER"
    assert make_task("count_letter", ("a", "banana")).answer == "3"
    assert make_task("length", ("pencil",)).answer == "6"
    assert make_task("count_items", ((4, 9, 1, 30),)).answer == "4"
    assert make_task("sort", ((40, 19, 44, 23),)).answer == "[19, 23, 40, 44]"
    assert make_task("max", ((32, 21, 20),)).answer == "32"
    assert make_task("min", ((20, 18, 45, 12),)).answer == "12"
    with pytest.raises(ValueError, match="reverse"):
        make_task("reverse", ("level",))                  # a palindrome has no wrong-but-right-kind


def test_generator_is_deterministic():
    a = [sample_task(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    seq = lambda seed: [sample_task(r) for r in [random.Random(seed)] for _ in range(200)]  # noqa: E731
    assert seq(7) == seq(7)
    assert seq(7) != seq(8)


# ----------------------------------------------------------------------------- parse_task

def test_parse_task_round_trip_every_template():
    rng = random.Random(5)
    for name, fam in FAMILIES.items():
        for i in range(len(fam.templates)):
            for _ in range(20):
                task = make_task(name, fam.sample_args(rng), i)
                assert parse_task(task.prompt) == task
                assert parse_task("  " + task.prompt.replace(" ", "  \n") + " ") == task


@pytest.mark.parametrize("prompt", [
    "What is 2 + 3",                               # no question mark: not the template
    "what is 2 + 3?",                              # case differs
    'Reverse the word "level".',                   # palindrome: rejected by the family
    'Reverse the word "Apple".',                   # words are lowercase
    "What is the largest number in []?",
    "Tell me a story about a dragon.",
    "",
    None,
])
def test_parse_task_rejects(prompt):
    assert parse_task(prompt) is None


def test_parse_task_accepts_values_beyond_the_generator_ranges():
    task = parse_task("What is 3 - 250?")          # the generator never makes negative answers
    assert task.family == "sub" and task.answer == "-247"
    assert grade(task, "-247") == 5 and grade(task, "247") == 2
    assert grade_prompt("What is 120 * 30?", "3600") == 5
    assert parse_task("What is 1200 * 3?") is None     # mul accepts operands up to 999
    assert grade_prompt("Write me a poem.", "Roses are red.") is None


# ----------------------------------------------------------------------------- grader, by hand

ADD = make_task("add", (23, 45))                   # "What is 23 + 45?" -> 68
MAX = make_task("max", ((4, 17, 9),))              # "What is the largest number in [4, 17, 9]?" -> 17
SORT = make_task("sort", ((5, 2, 9, 1),))          # -> "[1, 2, 5, 9]"
REV = make_task("reverse", ("apple",))             # -> "elppa"
UP = make_task("upper", ("river",))                # -> "RIVER"
CNT = make_task("count_letter", ("a", "banana"))   # -> "3"


@pytest.mark.parametrize("task,response,score", [
    # 0: empty, or nothing about the task (no number, no task word, no family word)
    (ADD, "", 0),
    (ADD, "   \n ", 0),
    (ADD, "I like turtles.", 0),
    (REV, "Cats sleep a lot.", 0),
    # 1: on topic ("sum"; "reverse"; the list echoed) but no answer of the right kind
    (ADD, "That is a sum.", 1),
    (ADD, "The question is 23 + 45.", 1),            # 23 and 45 are echoes of the question
    (MAX, "The list is [4, 17, 9].", 1),             # numbers inside brackets are list items
    (SORT, "[5, 2, 9, 1]", 1),                       # the unsorted list is an echo
    (REV, "Reverse it letter by letter.", 1),
    (REV, "apple", 1),                               # the word itself is not a reversal
    (UP, "Use capital letters.", 1),
    # 2: right kind, wrong value
    (ADD, "67", 2),
    (ADD, "The answer is 78.", 2),
    (SORT, "[1, 2, 9, 5]", 2),
    (REV, "elpap", 2),                               # a rearrangement of a-p-p-l-e, not the reversal
    (UP, "RIVRE", 2),
    (CNT, "2", 2),
    # 3: correct answer present, but not direct: competing answer, hedge, extra line, too long
    (ADD, "It is 68, or maybe 67.", 3),              # last answer 67 is not the correct one
    (ADD, "I think it is 68.", 3),                   # hedging
    (ADD, "Let me see.\n68", 3),                     # two lines
    (ADD, "68 is the answer to your question and I hope that this helps you a lot today.", 3),
    (MAX, "4, 17, 9", 3),                            # documented simplification: unbracketed echo
    (SORT, "Sorted: [1, 2, 5, 9], or [9, 5, 2, 1] descending.", 3),
    # 4: direct and clean, but not the bare canonical form
    (ADD, "23 + 45 = 68.", 4),                       # echoes allowed, last answer correct
    (ADD, "The answer is 68.", 4),
    (MAX, "The largest number in [4, 17, 9] is 17.", 4),
    (SORT, "The sorted list is [1,2,5,9].", 4),      # same list, non-canonical spacing
    (REV, 'The word "apple" reversed is "elppa".', 4),
    (REV, "ELPPA", 4),                               # reversal, wrong case: not exact
    (UP, "In capitals it is RIVER.", 4),
    (CNT, 'The letter "a" appears 3 times in "banana".', 4),
    (ADD, "68.", 4),
    # 5: exactly the canonical answer (surrounding whitespace ignored)
    (ADD, "68", 5),
    (ADD, " 68\n", 5),
    (MAX, "17", 5),
    (SORT, "[1, 2, 5, 9]", 5),
    (REV, "elppa", 5),
    (UP, "RIVER", 5),
    (CNT, "3", 5),
])
def test_grade_hand_written(task, response, score):
    assert grade(task, response) == score
    assert is_exact(task, response) == (score == 5)


def test_criteria_are_additive_prefix():
    # "68" inside a bracketed list is a list item, so the 2nd criterion fails and later
    # criteria do not count even though "68" is in the text: score 1 (on topic via 23/45/68).
    assert criteria(ADD, "[23, 45, 68]")[1] is False
    assert grade(ADD, "[23, 45, 68]") == 1


def test_candidate_extraction():
    assert candidates(ADD, "3.5 and 68th and 168 and -4 and 68") == ["168", "-4", "68"]
    assert candidates(SORT, "[1, 2] [a, b] [3,4]") == ["[1, 2]", "[3, 4]"]
    assert candidates(UP, "I say RIVER and A and Ok") == ["RIVER"]
    assert candidates(REV, "apple Elppa pale leppa") == ["elppa", "leppa"]


def test_responses_of_each_quality_grade_exactly():
    rng = random.Random(11)
    for _ in range(300):
        task = sample_task(rng)
        texts = responses_of_each_quality(task, rng)
        assert [grade(task, t) for t in texts] == [0, 1, 2, 3, 4, 5]
        assert texts[5] == task.answer
    with pytest.raises(ValueError):
        response_of_quality(ADD, 6, rng)


def test_judgement_text_parses_with_the_judge_parser():
    from srlm.judge import parse_score
    rng = random.Random(5)
    for s in range(6):
        reply = response_of_quality(ADD, s, rng)
        text = judgement_text(ADD, reply, s)
        assert text.startswith(working(ADD) + "\n")
        assert parse_score(text) == float(s)


# Worked solutions, written out by hand: each step is one digit fact, one comparison or one count.
WORKED = [
    (("add", (27, 45)), "Ones 7 + 5 = 12, carry 1; tens 2 + 4 + 1 = 7. That gives 72."),
    (("add", (95, 7)), "Ones 5 + 7 = 12, carry 1; tens 9 + 0 + 1 = 10, carry 1. That gives 102."),
    (("sub", (71, 28)), "Ones 11 - 8 = 3, borrow 1; tens 6 - 2 = 4. That gives 43."),
    (("sub", (100, 1)), "Ones 10 - 1 = 9, borrow 1; tens 9 - 0 = 9, borrow 1; hundreds 0 - 0 = 0. That gives 99."),
    (("sub", (3, 10)), "10 is larger, so the answer is negative: ones 10 - 3 = 7, borrow 1; tens 0 - 0 = 0. "
                        "That gives -7."),
    (("mul", (3, 7)), "3 times 7: 7 (1), 14 (2), 21 (3). That gives 21."),
    (("mul", (20, 3)), "20 times 3. That gives 60."),
    (("reverse", ("apple",)), "Spelled a p p l e; from the end e l p p a. That gives elppa."),
    (("upper", ("river",)), "Spelled r i v e r; in capitals R I V E R. That gives RIVER."),
    (("count_letter", ("a", "banana")), 'Counting "a": b, a (1), n, a (2), n, a (3). That gives 3.'),
    (("count_letter", ("z", "table")), 'Counting "z": t, a, b, l, e. That gives 0.'),
    (("length", ("table",)), "Counting: t (1), a (2), b (3), l (4), e (5). That gives 5."),
    (("count_items", ((34, 17, 8),)), "Counting: 34 (1), 17 (2), 8 (3). That gives 3."),
    (("max", ((21, 32, 20),)), "Largest so far: 21 -> 21, 32 -> 32, 20 -> 32. That gives 32."),
    (("min", ((21, 32, 20),)), "Smallest so far: 21 -> 21, 32 -> 21, 20 -> 20. That gives 20."),
    (("sort", ((40, 19, 44, 23),)), "Inserting one at a time: [40], [19, 40], [19, 40, 44], [19, 23, 40, 44]. "
                                    "That gives [19, 23, 40, 44]."),
]


@pytest.mark.parametrize("spec,expected", WORKED, ids=[f"{f}-{a}" for (f, a), _ in WORKED])
def test_worked_solution_written_out(spec, expected):
    assert working(make_task(*spec)) == expected


def test_worked_solution_ends_with_the_answer_for_every_task():
    rng = random.Random(3)
    for _ in range(500):
        task = sample_task(rng)
        assert working(task).endswith(f"That gives {task.answer}.")


def test_judgement_names_the_reply_answer_and_the_verdict():
    # "Hmm, 68? Or maybe 7." offers the right answer among others: the judge names the right one
    assert reply_answer(ADD, "Hmm, 68? Or maybe 7.") == "68"
    assert reply_answer(ADD, "I believe the answer is 70.") == "70"
    assert reply_answer(ADD, "You add the numbers.") is None
    assert reply_answer(ADD, "23 + 45") is None          # only echoes of the question
    text = judgement_text(ADD, "I believe the answer is 70.", 2)
    assert text == (working(ADD) + "\nThe reply says 70. Digit by digit against 68: 7 and 6 differ, so it is wrong. "
                    "It gives an answer of the right kind, but a wrong one.\nScore: 2")
    text = judgement_text(ADD, "The answer is 68.", 4)
    assert ("\nThe reply says 68. Digit by digit against 68: 6 and 6, 8 and 8, all the same, so it is right. "
            "It states the correct answer directly") in text
    assert "\nThe reply gives no answer to check. It is off topic.\nScore: 0" in judgement_text(ADD, "Hello.", 0)


# The check against the worked result, written out by hand: one unit per step from the left,
# stopping at the first difference; a shorter answer runs out into "nothing".
COMPARISONS = [
    (("add", (23, 45)), "68", "Digit by digit against 68: 6 and 6, 8 and 8, all the same, so it is right."),
    (("add", (23, 45)), "69", "Digit by digit against 68: 6 and 6, 9 and 8 differ, so it is wrong."),
    (("add", (23, 45)), "6", "Digit by digit against 68: 6 and 6, nothing and 8 differ, so it is wrong."),
    (("add", (23, 45)), "680", "Digit by digit against 68: 6 and 6, 8 and 8, 0 and nothing differ, so it is wrong."),
    (("sub", (3, 10)), "7", "Digit by digit against -7: 7 and - differ, so it is wrong."),
    (("sub", (3, 10)), "-7", "Digit by digit against -7: - and -, 7 and 7, all the same, so it is right."),
    (("reverse", ("apple",)), "elpap", "Letter by letter against elppa: e and e, l and l, p and p, a and p differ, "
                                       "so it is wrong."),
    (("upper", ("cat",)), "CAT", "Letter by letter against CAT: C and C, A and A, T and T, all the same, "
                                 "so it is right."),
    (("sort", ((40, 19, 23),)), "[19, 40, 23]", "Item by item against [19, 23, 40]: 19 and 19, 40 and 23 differ, "
                                                "so it is wrong."),
    (("sort", ((40, 19, 23),)), "[19, 23]", "Item by item against [19, 23, 40]: 19 and 19, 23 and 23, "
                                            "nothing and 40 differ, so it is wrong."),
]


@pytest.mark.parametrize("spec,said,expected", COMPARISONS, ids=[f"{f}-{s}" for (f, _), s, _ in COMPARISONS])
def test_comparison_written_out(spec, said, expected):
    assert comparison(make_task(*spec), said) == f"The reply says {said}. {expected}"


def test_comparison_verdict_is_equality_for_every_reply():
    rng = random.Random(5)
    for _ in range(500):
        task = sample_task(rng)
        for score, reply in enumerate(responses_of_each_quality(task, rng)):
            if score < 2:                     # no answer of the right kind: nothing to compare
                continue
            said = reply_answer(task, reply)
            right = comparison(task, said).endswith("all the same, so it is right.")
            assert right == (said.lower() == task.answer.lower()) == (score >= 3)


def test_judgements_fit_the_tiny_judge_budget():
    """The longest judgement the seed data teaches (sorting five two-digit numbers, all correct) fits
    in the loop's tiny judge_max_new_tokens, so no self-judgement is cut before its score."""
    spm = pytest.importorskip("sentencepiece")
    if not (DATA / "tokenizer.model").is_file():
        pytest.skip("data/tokenizer.model not built")
    from srlm.loop import SETTINGS

    sp = spm.SentencePieceProcessor(model_file=str(DATA / "tokenizer.model"))
    task = make_task("sort", ((48, 37, 26, 45, 34),))
    longest = judgement_text(task, "I think the sorted list is [26, 34, 37, 45, 48].", 4)
    assert len(sp.encode(longest)) + 1 <= SETTINGS["tiny"]["judge_max_new_tokens"]   # + EOS


# ----------------------------------------------------------------------------- committed data/

def _load_build():
    spec = importlib.util.spec_from_file_location("srlm_data_build", DATA / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not built (python -m data.build)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_committed_text_files_match_the_generator():
    build = _load_build()
    files = build.build_text(seed=0)
    for name in build.TEXT_FILES:
        assert _rows(name) == files[name], f"data/{name} differs from build_text(seed=0): rebuild data/"


def test_build_text_is_independent_of_hash_seed():
    """Sets must never decide an order: a fresh interpreter with another PYTHONHASHSEED agrees."""
    import subprocess
    import sys
    code = ("import importlib.util,json,sys;s=importlib.util.spec_from_file_location('b','data/build.py');"
            "m=importlib.util.module_from_spec(s);s.loader.exec_module(m);"
            "f=m.build_text(seed=3,n_eval=22,n_groups=11,n_ift=44,n_eft_tasks=12,n_sheets=20,n_notes=5);"
            "print(json.dumps(f,sort_keys=True))")
    outs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2")]
    assert outs[0] == outs[1] and len(outs[0]) > 1000


def test_data_fields_counts_and_disjointness():
    ift, eft = _rows("ift.jsonl"), _rows("eft.jsonl")
    seeds, evals, groups = _rows("seed_prompts.jsonl"), _rows("eval_prompts.jsonl"), _rows("eval_groups.jsonl")
    corpus = _rows("pretrain.jsonl")
    assert len(ift) >= 300 and len(eft) >= 300 and len(evals) >= 100 and len(groups) >= 50

    # IFT: every response is correct, bare (5) or one direct sentence (4), each style 35-65%; every family present
    ift_tasks = [parse_task(r["prompt"]) for r in ift]
    grades = [grade(t, r["response"]) for t, r in zip(ift_tasks, ift)]
    assert all(t is not None for t in ift_tasks) and set(grades) == {4, 5}
    assert 0.35 < grades.count(5) / len(grades) < 0.65
    assert {t.family for t in ift_tasks} == set(FAMILY_NAMES)
    assert [r["prompt"] for r in seeds] == [r["prompt"] for r in ift]
    assert all(set(r) == {"id", "prompt", "source"} for r in seeds)

    # EFT: the score in each judgement is the grader's score of the embedded answer; balanced
    scores = Counter()
    eft_tasks = []
    for r in eft:
        m = re.search(r"\nQuestion: (.*)\nAnswer: (.*?)\nGive one short reason", r["prompt"], re.DOTALL)
        task = parse_task(m.group(1))
        s = int(r["response"].rsplit("Score: ", 1)[1])
        assert grade(task, m.group(2)) == s
        assert r["response"] == judgement_text(task, m.group(2), s)
        scores[s] += 1
        eft_tasks.append(task)
    # weighted towards wrong answers (build.SCORE_WEIGHTS); with 3 distinct scores per question a
    # wrong one (2) can be at most a third of the rows, and is: 1/3, then 1/6 each for 4 and 5, 1/9
    # each for 0, 1 and 3
    share = {s: n / len(eft) for s, n in scores.items()}
    assert set(scores) == set(range(6))
    assert abs(share[2] - 1 / 3) < 0.005 and abs(share[4] - 1 / 6) < 0.005 and abs(share[5] - 1 / 6) < 0.005
    assert all(abs(share[s] - 1 / 9) < 0.005 for s in (0, 1, 3))

    # held-out groups: 4 replies, ranks follow the grader (0 = best), no ties
    group_tasks = []
    for g in groups:
        task = parse_task(g["prompt"])
        graded = [grade(task, reply) for reply in g["replies"]]
        assert graded == g["scores"] and len(set(graded)) == 4
        assert g["ranks"] == [sorted(graded, reverse=True).index(x) for x in graded]
        group_tasks.append(task)

    # held-out questions (by task, any wording) never appear in IFT, EFT or the corpus
    eval_tasks = [parse_task(r["prompt"]) for r in evals]
    assert all(t is not None and t.family == r["family"] for t, r in zip(eval_tasks, evals))
    held_out = {t.key for t in eval_tasks + group_tasks}
    assert len(held_out) == len(eval_tasks) + len(group_tasks)
    assert not held_out & {t.key for t in ift_tasks + eft_tasks}
    assert len({t.key for t in ift_tasks}) == len(ift)
    corpus_text = "\n".join(r["text"] for r in corpus)
    for key in held_out:
        family, args = key
        for i in range(len(FAMILIES[family].templates)):
            assert make_task(family, args, i).prompt not in corpus_text
    assert "[INST]" not in corpus_text                 # M0's corpus is not chat data


def test_more_eval_prompts_are_asked_nowhere_else(monkeypatch):
    """eval_prompts_more.jsonl: 100 questions per family of build.MORE_FAMILIES, none asked by any
    other file (by task, any wording), the corpus included; and the families left out have no
    question to spare (every times-table and word question is asked somewhere already)."""
    build = _load_build()
    more = _rows("eval_prompts_more.jsonl")
    tasks = [parse_task(r["prompt"]) for r in more]
    assert all(t is not None and t.family == r["family"] for t, r in zip(tasks, more))
    assert Counter(t.family for t in tasks) == {f: 100 for f in build.MORE_FAMILIES}
    keys = {t.key for t in tasks}
    assert len(keys) == len(more)
    others = [parse_task(r["prompt"]) for name in ("ift.jsonl", "eval_prompts.jsonl", "eval_groups.jsonl")
              for r in _rows(name)]
    judged = [re.search(r"\nQuestion: (.*)\nAnswer: ", r["prompt"]).group(1)
              for name in ("eft.jsonl", "eft_checks.jsonl") for r in _rows(name)]
    assert not keys & ({t.key for t in others} | {parse_task(q).key for q in judged})
    corpus_text = "\n".join(r["text"] for r in _rows("pretrain.jsonl"))
    for family, args in keys:
        for i in range(len(FAMILIES[family].templates)):
            assert make_task(family, args, i).prompt not in corpus_text
    asked: set = set()
    real = build.draw_tasks

    def recording(*args, **kwargs):  # every question any file of the world asks
        tasks = real(*args, **kwargs)
        asked.update(t.key for t in tasks)
        return tasks

    monkeypatch.setattr(build, "draw_tasks", recording)
    build.build_text(seed=0, n_more=0)
    for family in set(FAMILY_NAMES) - set(build.MORE_FAMILIES):
        space = 121 if family == "mul" else sum(FAMILIES[family].valid((w,)) for w in WORDS)
        assert sum(f == family for f, _ in asked) == space


def test_tokenizer_model():
    spm = pytest.importorskip("sentencepiece")
    path = DATA / "tokenizer.model"
    if not path.is_file():
        pytest.skip("data/tokenizer.model not built")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert 512 <= sp.vocab_size() <= 1000
    for symbol in ("[INST]", "[/INST]", "\n"):
        assert sp.piece_to_id(symbol) != sp.unk_id()
    text = "[INST] What is 23 + 45? [/INST] The expected answer is 68; fine.\nScore: 4"
    ids = sp.encode(text)
    assert sp.decode(ids) == text                      # newlines survive: "Score:" stays on its line
    assert sp.unk_id() not in ids
    pieces = [sp.id_to_piece(i) for i in sp.encode("12345")]
    assert all(sum(ch.isdigit() for ch in p) <= 1 for p in pieces)   # digits split one by one


def test_m0_checkpoint_matches_tokenizer():
    config = DATA / "m0" / "config.json"
    if not config.is_file():
        pytest.skip("data/m0 not built")
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(DATA / "tokenizer.model"))
    cfg = json.loads(config.read_text())
    assert cfg["vocab_size"] == sp.vocab_size()
    assert (DATA / "m0" / "model.safetensors").is_file()
    assert (DATA / "m0" / "tokenizer.model").read_bytes() == (DATA / "tokenizer.model").read_bytes()


# ----------------------------------------------------------------------------- answer-correct and tell-free groups

@pytest.mark.parametrize("response, right", [
    ("68", True),                                   # bare
    ("The answer is 68.", True),                    # sentence: 23 + 45 = 68
    ("23 + 45 = 68.", True),                        # the last number offered decides
    ("I think it might be 70, or perhaps 68.", True),   # hedged, but its last answer is right
    ("Hmm, 68? Or maybe 70.", False),               # its last answer is 70
    ("70", False),
    ("I enjoy walking in the park.", False),        # no answer
    ("", False),
])
def test_answer_correct_hand_written(response, right):
    assert answer_correct(ADD, response) == right


def test_crossed_replies_no_wording_predicts_correctness():
    rng = random.Random(2)
    for _ in range(300):
        task = sample_task(rng)
        group = crossed_replies(task, rng)
        assert sorted((r, s) for _, r, s in group) == sorted((r, s) for r in (False, True) for s in STYLES)
        for reply, right, style in group:
            assert answer_correct(task, reply) == right
            assert grade(task, reply) == ({"bare": 5, "sentence": 4, "hedged": 3}[style] if right else 2)


def test_tellfree_groups_file():
    """Same held-out questions as eval_groups.jsonl; right and wrong each bare, in a sentence and
    hedged; ranks follow the grader; built deterministically by the generator."""
    tellfree, groups = _rows("eval_tellfree.jsonl"), _rows("eval_groups.jsonl")
    assert [g["prompt"] for g in tellfree] == [g["prompt"] for g in groups]
    for g in tellfree:
        task = parse_task(g["prompt"])
        assert [answer_correct(task, r) for r in g["replies"]] == g["correct"]
        assert sorted(zip(g["correct"], g["styles"])) == sorted((c, s) for c in (False, True) for s in STYLES)
        graded = [grade(task, r) for r in g["replies"]]
        assert graded == g["scores"] and sorted(graded) == [2, 2, 2, 3, 4, 5]
        assert g["ranks"] == [sum(o > x for o in graded) for x in graded]
    build = _load_build()
    assert build.build_text(seed=0)["eval_tellfree.jsonl"] == build.build_text(seed=0)["eval_tellfree.jsonl"]


def test_corpus_checks_are_consistent():
    """Every check in the corpus (grading notes and check drills) compares the reply's answer with
    the worked result written just above it, says "right" exactly when the two are equal, and is
    what srlm.world.comparison writes; every worked exercise's last step gives the answer the
    grader accepts."""
    corpus = "\n".join(r["text"] for r in _rows("pretrain.jsonl"))
    checks = re.findall(r"That gives (.+?)\.\nThe reply says (.+?)\. (?:Digit|Letter|Item) by \w+ against (.+?): "
                        r".+?, (all the same, so it is right|so it is wrong)\.", corpus)
    assert len(checks) > 8_000
    assert all(x == x2 and (x.lower() == y.lower()) == (v.endswith("right")) for x, y, x2, v in checks)
    assert 0.35 < sum(v.endswith("right") for *_, v in checks) / len(checks) < 0.65
    notes = re.findall(r"Question: (.+)\nAnswer: (.+)\n(.+ That gives .+?\.)\n(The reply says .+?\.)(?: It |$|\n)",
                       corpus, flags=re.M)
    assert len(notes) > 5_000
    for prompt, reply, steps, check in notes:
        task = parse_task(prompt)
        assert steps == working(task) and check == comparison(task, reply_answer(task, reply))
    worked = re.findall(r"Question: (.+)\n(.+ That gives (.+?)\.)\nAnswer: (.+)", corpus)
    assert len(worked) > 1000
    for prompt, steps, x, answer in worked:
        task = parse_task(prompt)
        assert x == answer == task.answer and steps == working(task)


# ----------------------------------------------------------------------------- near misses

def _one_slip(right: str, wrong: str) -> bool:
    """Plain check that `wrong` is one slip from `right`: for a number, off by one, a digit cut
    from the end (or all but the first), or the last two digits swapped; for a list, two
    neighbours swapped, one item changed or dropped; for a word, two neighbours swapped or one
    letter changed."""
    if right.isdigit():
        return (wrong.isdigit() and abs(int(wrong) - int(right)) == 1 or wrong in (right[:-1], right[0])
                or len(right) > 1 and wrong == right[:-2] + right[-1] + right[-2])
    if right.startswith("["):
        a, b = json.loads(right), json.loads(wrong)
        if len(b) == len(a) - 1:
            return any(a[:i] + a[i + 1:] == b for i in range(len(a)))
        if len(b) != len(a):
            return False
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or len(diff) == 2 and diff[1] == diff[0] + 1 and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
    if len(right) != len(wrong):
        return False
    diff = [i for i in range(len(right)) if right[i] != wrong[i]]
    return len(diff) == 1 or len(diff) == 2 and diff[1] == diff[0] + 1 and right[diff[0]] == wrong[diff[1]]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_near_miss_is_one_slip_and_graded_wrong(family):
    rng = random.Random(7)
    far = 0                                                # wrong_answer's fallback: every slip was an echo
    for _ in range(150):
        task = sample_task(rng, family)
        wrong = near_miss(task, rng)
        far += not _one_slip(task.answer, wrong)
        for template in WRONG:
            reply = template.format(wrong=wrong)
            assert not answer_correct(task, reply) and grade(task, reply) == 2, (task, reply)
    assert far <= 5


def test_near_miss_hand_written():
    rng = random.Random(0)
    # min of [11, 20, 35]: 10 or 12 (off by one), 1 (cut to the first digit); never 11
    task = make_task("min", ((20, 11, 35),))
    assert {near_miss(task, rng) for _ in range(200)} == {"10", "12", "1"}
    # "cat" reversed is "tac": "atc" and "tca" (two neighbours swapped); "cat" itself is the question
    task = make_task("reverse", ("cat",))
    assert {near_miss(task, rng) for _ in range(200)} == {"atc", "tca"}
    # sort [5, 3, 9] -> [3, 5, 9]: never the question's own order written back
    task = make_task("sort", ((5, 3, 9),))
    slips = {near_miss(task, rng) for _ in range(500)}
    assert "[5, 3, 9]" not in slips and "[3, 5, 9]" not in slips
    assert {"[3, 9, 5]", "[3, 4, 9]", "[3, 9]", "[3, 3, 9]", "[2, 5, 9]"} <= slips


def test_eft_checks_file():
    """A right reply (4 or 5) and two near misses (2) per question; the judgement is the grader's;
    no held-out question; built by the generator."""
    rows = _rows("eft_checks.jsonl")
    held_out = {parse_task(r["prompt"]).key for r in _rows("eval_prompts.jsonl") + _rows("eval_groups.jsonl")}
    scores, far = Counter(), 0
    for r in rows:
        m = re.search(r"\nQuestion: (.*)\nAnswer: (.*?)\nGive one short reason", r["prompt"], re.DOTALL)
        task = parse_task(m.group(1))
        assert task.key not in held_out
        s = int(r["response"].rsplit("Score: ", 1)[1])
        assert grade(task, m.group(2)) == s and r["response"] == judgement_text(task, m.group(2), s)
        far += s == 2 and not _one_slip(task.answer, reply_answer(task, m.group(2)))
        scores[s] += 1
    assert far < 20                                        # of 800 near misses
    assert len(rows) == 1200 and scores[2] == 800 and scores[4] + scores[5] == 400


# ----------------------------------------------------------------------------- the worked world

@pytest.mark.parametrize("response, score, right", [
    # 34 + 19 = 53, worked in columns: exactly working(task) -> 5
    ("Ones 4 + 9 = 13, carry 1; tens 3 + 1 + 1 = 5. That gives 53.", 5, True),
    # a slip in a step, the conclusion still right -> 4 (direct, not the worked solution itself)
    ("Ones 4 + 9 = 12, carry 1; tens 3 + 1 + 1 = 5. That gives 53.", 4, True),
    # the steps' numbers (13, 5) are not offered answers: only the conclusion is read
    ("Ones 4 + 9 = 13, carry 1; tens 3 + 1 = 4. That gives 43.", 2, False),
    # hedged conclusion -> 3; two competing answers in the conclusion -> 3, the last one counts
    ("Ones 4 + 9 = 13, carry 1; tens 3 + 1 + 1 = 5. That gives maybe 53.", 3, True),
    ("Ones 4 + 9 = 13, carry 1; tens 3 + 1 + 1 = 5. That gives 43 or 53.", 3, True),
    # a conclusion with no number -> 1 (on topic: "ones", "tens" are numbers of the question's kind)
    ("Ones 4 + 9 = 13, carry 1. That gives nothing.", 1, False),
])
def test_worked_reply_graded_on_its_conclusion(response, score, right):
    task = make_task("add", (34, 19))
    assert grade(task, response) == score
    assert answer_correct(task, response) is right
    assert is_exact(task, response) is (score == 5)


def test_worked_reply_answer_is_the_conclusion():
    # "cat" has 3 letters; the reply counts 3 as "(3)" in its steps, but concludes 4
    task = make_task("length", ("cat",))
    reply = "Counting: c (1), a (2), a (3), t (4). That gives 4."
    assert conclusion(reply) == "4."
    assert reply_answer(task, reply) == "4" and not answer_correct(task, reply) and grade(task, reply) == 2
    assert conclusion("4") is None and reply_answer(task, "The answer is 3.") == "3"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_slipped_working_is_a_worked_reply_graded_wrong(family):
    rng = random.Random(3)
    ones = 0
    for _ in range(100):
        task = sample_task(rng, family)
        reply = slipped_working(task, rng)
        assert reply != working(task) and conclusion(reply) is not None
        assert grade(task, reply) in (1, 2) and not answer_correct(task, reply)
        ones += grade(task, reply) == 1                   # every slip an echo of the question
        assert grade(task, working(task)) == 5 and is_exact(task, working(task))
    assert ones <= 3


def test_slipped_working_hand_written():
    rng = random.Random(0)
    # length of "cat": a letter dropped (2) or doubled (4); a swap keeps 3 letters and is no slip
    task = make_task("length", ("cat",))
    got = {slipped_working(task, rng) for _ in range(300)}
    assert got == {"Counting: a (1), t (2). That gives 2.", "Counting: c (1), t (2). That gives 2.",
                   "Counting: c (1), a (2). That gives 2.", "Counting: c (1), c (2), a (3), t (4). That gives 4.",
                   "Counting: c (1), a (2), a (3), t (4). That gives 4.",
                   "Counting: c (1), a (2), t (3), t (4). That gives 4."}
    # 3 * 4 read as 2 * 4 or 4 * 4 (one digit one off); 3 * 5 and 3 * 3 too
    task = make_task("mul", (3, 4))
    got = {conclusion(slipped_working(task, rng)) for _ in range(300)}
    assert got == {"8.", "16.", "15.", "9."}


def test_worked_world_files():
    """ift_worked.jsonl: the IFT questions, each answered with its worked solution. eft_worked.jsonl:
    per question the right working (5) and two slipped ones (2), judged as the grader scores them;
    no held-out question (eval_prompts_more.jsonl's included)."""
    ift, worked = _rows("ift.jsonl"), _rows("ift_worked.jsonl")
    assert [r["prompt"] for r in worked] == [r["prompt"] for r in ift]
    assert all(r["response"] == working(parse_task(r["prompt"])) for r in worked)
    held_out = {parse_task(r["prompt"]).key for name in ("eval_prompts.jsonl", "eval_groups.jsonl",
                                                         "eval_prompts_more.jsonl") for r in _rows(name)}
    scores = Counter()
    for r in _rows("eft_worked.jsonl"):
        m = re.search(r"\nQuestion: (.*)\nAnswer: (.*?)\nGive one short reason", r["prompt"], re.DOTALL)
        task, reply = parse_task(m.group(1)), m.group(2)
        assert task.key not in held_out
        s = int(r["response"].rsplit("Score: ", 1)[1])
        assert grade(task, reply) == s and r["response"] == judgement_text(task, reply, s)
        assert (s == 5) == (reply == working(task)) and s in (1, 2, 5)
        scores[s] += 1
    assert scores[5] == 300 and scores[2] >= 590
