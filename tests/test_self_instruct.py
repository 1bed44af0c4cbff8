"""Tests for srlm/self_instruct.py: few-shot prompt text, parsing hand-made generations, the LCS /
ROUGE-L similarity against hand-computed values and brute force, and the duplicate filter.

    python -m pytest -q tests/test_self_instruct.py
"""
import itertools
import random

import pytest

from srlm.self_instruct import (HEADER, STOP_STRINGS, DuplicateFilter, build_few_shot_prompt, choose_examples,
                                format_task, lcs_length, parse_instruction, rejection_reason, rouge_l, words)


def brute_force_lcs(a, b):
    """Longest common subsequence by trying every subsequence of the shorter input (tiny inputs only)."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    for n in range(len(short), 0, -1):
        for idx in itertools.combinations(range(len(short)), n):
            sub = [short[i] for i in idx]
            it = iter(long_)
            if all(any(x == y for y in it) for x in sub):  # sub is a subsequence of long_
                return n
    return 0


# ----------------------------------------------------------------------------- prompt building


def test_few_shot_prompt_text():
    """Two examples, one with a blank line inside (collapsed to one newline), then the open label."""
    prompt = build_few_shot_prompt(["What is 2+2?", "  Plan a trip.\n\nI like trains.  "])
    assert prompt == HEADER + "Task 1: What is 2+2?\n\nTask 2: Plan a trip.\nI like trains.\n\nTask 3:"
    assert format_task("a\n \n\nb") == "a\nb"


def test_choose_examples_mixes_seed_and_generated():
    seed = [f"seed {i}" for i in range(20)]
    gen = [f"gen {i}" for i in range(5)]
    ex = choose_examples(seed, gen, random.Random(0), n_shot=8, n_generated=2)
    assert len(ex) == 8 and len(set(ex)) == 8
    assert sum(e.startswith("gen") for e in ex) == 2
    # fewer generated prompts than asked: the seed pool fills in
    ex = choose_examples(seed, gen[:1], random.Random(0))
    assert sum(e.startswith("gen") for e in ex) == 1 and len(ex) == 8
    assert choose_examples(seed, gen, random.Random(5)) == choose_examples(seed, gen, random.Random(5))
    with pytest.raises(ValueError, match="seed pool"):
        choose_examples(seed[:3], [], random.Random(0))


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("generation, expected", [
    (" How do volcanoes form?\n\nTask 10: Write a poem.", "How do volcanoes form?"),
    (" How do volcanoes form?\nTask 10: Write a poem.", "How do volcanoes form?"),
    (" List three fruits.\nKeep it short.\n\nextra", "List three fruits.\nKeep it short."),
    ("Task 9: Explain recursion to a child.", "Explain recursion to a child."),  # chat model repeats the label
    ("   \n\n", None),
    (" Name a lake.\nTask", "Name a lake."),  # the sampler stopped on "\nTask "
    (" Summarise this: Task 3: is not a task", "Summarise this:"),
])
def test_parse_instruction(generation, expected):
    assert parse_instruction(generation) == expected


def test_stop_strings_end_a_task():
    """Whatever the sampler stops at, parsing the text up to and including the stop string gives the task."""
    for stop in STOP_STRINGS:
        assert parse_instruction(" Name a river." + stop) == "Name a river."


# ----------------------------------------------------------------------------- similarity


def test_lcs_hand_examples():
    """ABCBDAB vs BDCABA: LCS 4 (e.g. BCBA). Words 'how do i reverse a list in python' vs
    'how can i reverse a python list': LCS 5 (how i reverse a list), ROUGE-L = 2*5/(8+7) = 2/3."""
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert lcs_length("", "abc") == 0
    assert lcs_length("abc", "abc") == 3
    a, b = words("How do I reverse a list in Python?"), words("How can I reverse a Python list?")
    assert lcs_length(a, b) == 5
    assert rouge_l(a, b) == pytest.approx(2 / 3)
    assert rouge_l([], []) == 0.0


def test_lcs_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == brute_force_lcs(a, b), (a, b)


def test_duplicate_filter():
    pool = DuplicateFilter(["How do I reverse a list in Python?", "Write a haiku about rain."], threshold=0.6)
    assert pool.check("how do I reverse a list in python") == "exact_duplicate"  # case/punctuation ignored
    assert pool.check("How can I reverse a Python list?") == "near_duplicate"  # 2/3 >= 0.6
    assert pool.check("What is the tallest mountain in Africa?") is None
    strict = DuplicateFilter(["How do I reverse a list in Python?"], threshold=0.7)
    assert strict.check("How can I reverse a Python list?") is None  # 2/3 < 0.7
    strict.add("How can I reverse a Python list?")
    assert strict.check("How can I reverse a Python list?") == "exact_duplicate"
    assert len(strict) == 2


def test_duplicate_filter_pruning_agrees_with_full_scan():
    """The word-count bounds only skip entries that cannot reach the threshold: decisions equal a full
    scan that computes ROUGE-L against every pool entry."""
    rng = random.Random(1)
    vocab = "the a cat dog sat ran on mat log big red".split()
    pool = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(60)]
    f = DuplicateFilter(pool, threshold=0.7)
    for _ in range(200):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8)))
        full = max(rouge_l(words(text), words(p)) for p in pool)
        exact = " ".join(words(text)) in {" ".join(words(p)) for p in pool}
        expected = "exact_duplicate" if exact else ("near_duplicate" if full >= 0.7 else None)
        assert f.check(text) == expected, text


def test_rejection_reasons():
    pool = DuplicateFilter(["Name three birds."])
    assert rejection_reason(None, pool) == "unparsable"
    assert rejection_reason("Hi there", pool, min_words=3) == "too_short"
    assert rejection_reason("word " * 20, pool, max_words=10) == "too_long"
    assert rejection_reason("name three birds", pool) == "exact_duplicate"
    assert rejection_reason("Explain how tides work.", pool) is None
    with pytest.raises(ValueError, match="threshold"):
        DuplicateFilter([], threshold=0.0)
