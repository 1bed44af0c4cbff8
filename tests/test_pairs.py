"""Tests for srlm/pairs.py: judging candidates with a fake judge (chunk seeds, resume, sharding,
pairs) and the checks on its input files.

    python -m pytest -q tests/test_pairs.py
"""
import json
import re

import pytest

from srlm.io import DataError, read_jsonl, write_jsonl
from srlm.judge import COMPACT_TEMPLATE, pairs_from_judgements
from srlm.pairs import judge_candidates, load_candidates, load_groups

CANDIDATES = [
    {"id": "p1", "prompt": "Name a prime.", "candidates": ["score 2", "score 5", "score 4"]},
    {"id": "p2", "prompt": "Say hi.", "candidates": ["score 3", "score 3"]},
    {"id": "p3", "prompt": "Count to 3.", "candidates": ["score x", "score 1", "score 0"]},
]


ANSWER = re.compile(r"Answer: score (\S+)")


def fake_judge(calls):
    """Scores an answer 'score <v>' with v (read from the judge prompt); records (n, seed)."""
    def judge_fn(prompts, seed=0):
        calls.append((len(prompts), seed))
        return ["Fine.\nScore: " + ANSWER.search(p).group(1) for p in prompts]
    return judge_fn


def test_judge_candidates_rows_pairs_and_chunk_seeds(tmp_path):
    calls = []
    out = tmp_path / "judgements.jsonl"
    rows = judge_candidates(CANDIDATES, fake_judge(calls), out, k=2, template=COMPACT_TEMPLATE,
                                  chunk_size=3, seed=10, progress=False)
    assert calls == [(6, 10), (6, 11), (2, 12)]                 # 7 distinct candidates in chunks of 3, x2
    assert rows == read_jsonl(out) and len(rows) == 8
    assert [(r["id"], r["candidate_index"]) for r in rows] == \
        [("p1", 0), ("p1", 1), ("p1", 2), ("p2", 0), ("p2", 1), ("p3", 0), ("p3", 1), ("p3", 2)]
    assert {k: v for k, v in rows[1].items() if k != "input_hash"} == {
        "id": "p1", "candidate_index": 1, "judgements": ["Fine.\nScore: 5"] * 2, "scores": [5.0, 5.0],
        "mean_score": 5.0}
    assert len({r["input_hash"] for r in rows}) == 7              # one per (prompt, candidate text): p2 has twins
    assert rows[4] == dict(rows[3], candidate_index=1)           # p2's twin shares the judgements of the first
    assert rows[5]["scores"] == [None, None] and rows[5]["mean_score"] is None
    assert not list(tmp_path.glob("*.partial"))                 # merged and removed
    pairs, summary = pairs_from_judgements(CANDIDATES, rows, 1)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == \
        [("p1", "score 5", "score 2"), ("p3", "score 1", "score 0")]   # p2 is a tie
    assert summary["parse_failure_rate"] == 2 / 16


def test_identical_answers_are_judged_once_and_never_paired(tmp_path):
    """A sampled judge scores copies of one answer differently; judged once, the copies tie."""
    calls = []

    def noisy_judge(prompts, seed=0):            # a different score at every position: pure noise
        calls.append(len(prompts))
        return [f"Score: {1 + (seed + j) % 5}" for j in range(len(prompts))]

    rows = [{"id": "q", "prompt": "Say hi.", "candidates": ["hi", "hi", "hello", "hi"]}]
    judged = judge_candidates(rows, noisy_judge, tmp_path / "j.jsonl", k=1, template=COMPACT_TEMPLATE,
                              progress=False)
    assert calls == [2]                                          # "hi" and "hello"
    assert [r["scores"] for r in judged] == [[1.0], [1.0], [2.0], [1.0]]
    pairs, _ = pairs_from_judgements(rows, judged, 1)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("hello", "hi")]


def test_judge_candidates_show_only_the_final_answer_with_reply_after(tmp_path):
    """With reply_after the judge prompt holds only each candidate's final answer; the rows keep
    the whole candidates, and the judgements' resume keys differ from a whole-reply judge's."""
    seen = []

    def recording_judge(prompts, seed=0):
        seen.extend(re.search(r"Answer: (.*)", p).group(1) for p in prompts)
        return ["Score: 5"] * len(prompts)

    rows = [{"id": "q", "prompt": "What is 2 + 3?",
             "candidates": ["Ones 2 + 3 = 5. That gives 5.", "Ones 2 + 3 = 6. That gives 6.", "5"]}]
    judged = judge_candidates(rows, recording_judge, tmp_path / "a.jsonl", k=1, template=COMPACT_TEMPLATE,
                              progress=False, reply_after="That gives ")
    assert seen == ["5", "6", "5"]
    whole = judge_candidates(rows, recording_judge, tmp_path / "b.jsonl", k=1, template=COMPACT_TEMPLATE,
                             progress=False)
    assert seen[3:] == rows[0]["candidates"]
    assert not {r["input_hash"] for r in judged} & {r["input_hash"] for r in whole}


def test_judge_candidates_resumes_after_a_kill(tmp_path):
    out = tmp_path / "judgements.jsonl"
    calls = []
    inner = fake_judge(calls)

    def dies_on_second_chunk(prompts, seed=0):
        if len(calls) == 1:
            raise KeyboardInterrupt
        return inner(prompts, seed)

    with pytest.raises(KeyboardInterrupt):
        judge_candidates(CANDIDATES, dies_on_second_chunk, out, k=1, template=COMPACT_TEMPLATE,
                               chunk_size=3, progress=False)
    assert not out.exists() and len(read_jsonl(tmp_path / "judgements.jsonl.partial")) == 3
    calls.clear()
    rows = judge_candidates(CANDIDATES, inner, out, k=1, template=COMPACT_TEMPLATE,
                                  chunk_size=3, progress=False)
    assert [seed for _, seed in calls] == [1, 2]                # chunk 0 was not redone
    assert len(rows) == 8
    # a finished file: nothing is judged again
    judge_candidates(CANDIDATES, lambda p, seed=0: pytest.fail("re-judged"), out, k=1,
                           template=COMPACT_TEMPLATE, chunk_size=3, progress=False)


def test_judge_candidates_shards_chunks_over_ranks(tmp_path):
    """Two ranks run one after the other (no process group: barriers are no-ops): rank 1 takes
    chunks 1 and 3, rank 0 takes 0 and 2 and then merges both logs in input order."""
    out = tmp_path / "judgements.jsonl"
    calls1, calls0 = [], []
    assert judge_candidates(CANDIDATES, fake_judge(calls1), out, k=1, chunk_size=2,
                                  template=COMPACT_TEMPLATE, rank=1, world_size=2, progress=False) is None
    rows = judge_candidates(CANDIDATES, fake_judge(calls0), out, k=1, chunk_size=2,
                                  template=COMPACT_TEMPLATE, rank=0, world_size=2, progress=False)
    assert [s for _, s in calls1] == [1, 3] and [s for _, s in calls0] == [0, 2]
    assert [r["candidate_index"] for r in rows] == [0, 1, 2, 0, 1, 0, 1, 2]


def test_bad_candidates_files_are_clear_errors(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text(json.dumps(CANDIDATES[0]) + "\n{broken\n")
    with pytest.raises(DataError, match=r"candidates\.jsonl:2: malformed JSON"):
        load_candidates(path)
    write_jsonl(path, [{"id": "a", "prompt": "q", "candidates": "not a list"}])
    with pytest.raises(DataError, match=r"candidates\.jsonl:1: key 'candidates' must be a list of strings"):
        load_candidates(path)
    write_jsonl(path, [CANDIDATES[0], CANDIDATES[0]])
    with pytest.raises(DataError, match=r"candidates\.jsonl:2: key 'id': duplicate value 'p1' \(first on line 1\)"):
        load_candidates(path)
    write_jsonl(path, [{"prompt": "q", "replies": ["a", "b"], "ranks": [0]}])
    with pytest.raises(DataError, match=r"candidates\.jsonl:1: key 'ranks' has 1 ranks for 2 replies"):
        load_groups(path)
    write_jsonl(path, [{"prompt": 7, "replies": ["a", "b"], "ranks": [0, 1]}])
    with pytest.raises(DataError, match=r"candidates\.jsonl:1: key 'prompt' must be a string, got int 7"):
        load_groups(path)
    path.write_text("")
    with pytest.raises(DataError, match=r"candidates\.jsonl: no candidates in this file"):
        load_candidates(path)


def test_judge_candidates_rejudges_only_what_changed(tmp_path):
    """Reordered candidates of p1 and an edited prompt p2: those are judged again, p3 is reused."""
    out = tmp_path / "judgements.jsonl"
    judge_candidates(CANDIDATES, fake_judge([]), out, k=1, template=COMPACT_TEMPLATE, progress=False)
    changed = [{**CANDIDATES[0], "candidates": ["score 4", "score 5", "score 2"]},
               {**CANDIDATES[1], "prompt": "Say hello."}, CANDIDATES[2]]
    calls = []
    rows = judge_candidates(changed, fake_judge(calls), out, k=1, template=COMPACT_TEMPLATE, chunk_size=1,
                            progress=False)
    assert sum(n for n, _ in calls) == 3                         # p1's 0 and 2 (swapped), p2's 0 (1 is its twin)
    pairs, _ = pairs_from_judgements(changed, rows)
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("score 5", "score 2")  # never a stale score
    calls.clear()  # other judge settings (another model, another k) are other inputs too
    judge_candidates(changed, fake_judge(calls), out, k=1, template=COMPACT_TEMPLATE, progress=False,
                     context={"model": "another"})
    assert sum(n for n, _ in calls) == 7                         # every distinct candidate


def test_judge_candidates_never_shrinks_an_output_without_overwrite(tmp_path):
    out = tmp_path / "judgements.jsonl"
    judge_candidates(CANDIDATES, fake_judge([]), out, k=1, template=COMPACT_TEMPLATE, progress=False)
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"judgements\.jsonl: would replace its 8 judgement rows with 2"):
        judge_candidates(CANDIDATES[1:2], lambda p, seed=0: pytest.fail("judged"), out, k=1,
                         template=COMPACT_TEMPLATE, progress=False)
    assert out.read_bytes() == before
    rows = judge_candidates(CANDIDATES[1:2], fake_judge([]), out, k=1, template=COMPACT_TEMPLATE,
                            progress=False, overwrite=True)
    assert len(rows) == 2 and len(read_jsonl(out)) == 2


# ----------------------------------------------------------------------------- end to end
