"""Tests for srlm/oasst.py: OASST seed data (IFT, ranked groups, EFT) from the tree export.

    python -m pytest -q tests/test_oasst.py
"""
import json
import re

import pytest

from conftest import shared_file, small_tokenizer
from srlm.io import DataError, read_jsonl
from srlm.judge import COMPACT_TEMPLATE
from srlm.oasst import (build_eft, first_turn_groups, is_eval_tree, iter_trees, main,
                        rebalance_by_score, scores_agree)

SAMPLE = "oasst1_en_100_trees.jsonl"


# ----------------------------------------------------------------------------- the real sample

def _independent_counts(path, include_synthetic):
    """Straight from the raw file, without srlm: first-turn English prompts and their ranked,
    kept replies -> (IFT (prompt, rank-0 reply) list, number of groups with >= 2 ranks)."""
    def ok(m):
        return (not m["deleted"] and m["review_result"] is not False and m["lang"] == "en"
                and (include_synthetic or not m["synthetic"]))
    ift, groups = [], 0
    for line in open(path, encoding="utf-8"):
        root = json.loads(line)["prompt"]
        if not ok(root):
            continue
        ranked = [r for r in root["replies"] if ok(r) and r.get("rank") is not None]
        ift += [(root["text"], r["text"]) for r in ranked if r["rank"] == 0]
        groups += len({r["rank"] for r in ranked}) >= 2
    return ift, groups


@pytest.mark.parametrize("include_synthetic", [False, True])
def test_sample_counts_match_an_independent_count(tmp_path, include_synthetic):
    path = shared_file(SAMPLE)
    ift, n_groups = _independent_counts(path, include_synthetic)
    stats = main(["--trees", str(path), "--out-dir", str(tmp_path), "--eval-fraction", "0"]
                 + (["--include-synthetic"] if include_synthetic else []))
    rows = read_jsonl(tmp_path / "ift.jsonl", required=("id", "prompt", "response"))
    assert [(r["prompt"], r["response"]) for r in rows] == ift
    groups = read_jsonl(tmp_path / "train_groups.jsonl", required=("prompt", "replies", "ranks"))
    assert len(groups) == n_groups and stats["train_groups"] == n_groups
    assert read_jsonl(tmp_path / "eval_groups.jsonl") == []
    # the file has 5 synthetic trees; every other tree has a ranked first turn but one
    assert (len(ift), n_groups) == ((99, 99) if include_synthetic else (94, 94))
    for g in groups:   # best first, replies and ranks aligned
        assert g["ranks"] == sorted(g["ranks"]) and len(g["ranks"]) == len(g["replies"]) >= 2


def test_sample_split_is_disjoint_deterministic_and_eval_never_in_ift(tmp_path):
    path = shared_file(SAMPLE)
    _, n_groups = _independent_counts(path, False)
    main(["--trees", str(path), "--out-dir", str(tmp_path / "a"), "--eval-fraction", "0.25"])
    main(["--trees", str(path), "--out-dir", str(tmp_path / "b"), "--eval-fraction", "0.25"])
    for name in ("ift.jsonl", "train_groups.jsonl", "eval_groups.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = read_jsonl(tmp_path / "a" / "train_groups.jsonl")
    held = read_jsonl(tmp_path / "a" / "eval_groups.jsonl")
    ift = read_jsonl(tmp_path / "a" / "ift.jsonl")
    assert len(train) + len(held) == n_groups and 0 < len(held) < len(train)
    held_prompts = {g["prompt"] for g in held}
    assert held_prompts.isdisjoint(g["prompt"] for g in train)
    assert held_prompts.isdisjoint(r["prompt"] for r in ift)
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["eval_groups"] == len(held) and stats["prompts_skipped_synthetic"] == 5


def test_is_eval_tree_fraction_and_edges():
    ids = [f"tree-{i}" for i in range(4000)]
    share = sum(is_eval_tree(t, 0.25) for t in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert not any(is_eval_tree(t, 0.0) for t in ids) and all(is_eval_tree(t, 1.0) for t in ids)


# ----------------------------------------------------------------------------- hand-made trees

def _msg(mid, role, text, rank=None, replies=(), **kw):
    m = {"message_id": mid, "role": role, "text": text, "lang": "en", "deleted": False,
         "review_result": True, "synthetic": False, "replies": list(replies)}
    if rank is not None:
        m["rank"] = rank
    m.update(kw)
    return m


def _write_trees(path, roots):
    path.write_text("".join(json.dumps({"message_tree_id": r["message_id"], "tree_state":
                                        "ready_for_export", "prompt": r}) + "\n" for r in roots))
    return path


def test_skips_deleted_failed_review_non_english_synthetic_and_unranked(tmp_path):
    roots = [
        _msg("p1", "prompter", "Q1", replies=[
            _msg("a1", "assistant", "deleted best", 0, deleted=True),
            _msg("b1", "assistant", "second", 1),
            _msg("c1", "assistant", "failed review", 2, review_result=False),
            _msg("d1", "assistant", "not reviewed yet", 3, review_result=None),
            _msg("e1", "assistant", "unranked"),
            _msg("f1", "assistant", "auf Deutsch", 4, lang="de"),
            _msg("g1", "assistant", "model-written", 5, synthetic=True)]),
        _msg("p2", "prompter", "Q2 deleted", deleted=True, replies=[_msg("a2", "assistant", "x", 0)]),
        _msg("p3", "prompter", "Q3 in French", lang="fr", replies=[_msg("a3", "assistant", "x", 0)]),
        _msg("p4", "prompter", "Q4", replies=[_msg("a4", "assistant", "best", 0),
                                              _msg("b4", "assistant", "worst", 1)]),
    ]
    groups, stats = first_turn_groups(_write_trees(tmp_path / "t.jsonl", roots))
    assert [g["id"] for g in groups] == ["p1", "p4"]
    # p1: rank 0 was deleted -> b1 (1) and d1 (3) remain; IFT has no rank-0 reply for p1
    assert groups[0]["replies"] == ["second", "not reviewed yet"] and groups[0]["ranks"] == [1, 3]
    assert stats["replies_skipped_deleted"] == 1 and stats["replies_skipped_failed_review"] == 1
    assert stats["replies_skipped_unranked"] == 1 and stats["replies_skipped_not_english"] == 1
    assert stats["replies_skipped_synthetic"] == 1
    assert stats["prompts_skipped_deleted"] == 1 and stats["prompts_skipped_not_english"] == 1
    stats = main(["--trees", str(tmp_path / "t.jsonl"), "--out-dir", str(tmp_path / "out"), "--eval-fraction", "0"])
    assert read_jsonl(tmp_path / "out" / "ift.jsonl") == [{"id": "a4", "prompt": "Q4", "response": "best"}]
    assert stats["train_groups"] == 2
    groups, _ = first_turn_groups(tmp_path / "t.jsonl", include_synthetic=True)
    assert groups[0]["replies"][-1] == "model-written"


@pytest.mark.parametrize("line,message", [
    ("{not json", r"t\.jsonl:2: malformed JSON"),
    ('["a list"]', r"t\.jsonl:2: expected a tree object"),
    ('{"message_tree_id": "t", "prompt": "text"}', r"t\.jsonl:2: expected a tree object"),
    ('{"prompt": {"message_id": "m", "role": "prompter", "text": "q"}}', r"t\.jsonl:2: tree has no"),
    (None, r"t\.jsonl:2: message r1: 'rank' is 'first'"),
    (None, r"t\.jsonl:2: message r1: 'text' is missing"),
    (None, r"t\.jsonl:2: message r1: 'role' is 'bot'"),
    (None, r"t\.jsonl:2: a message has no 'message_id'"),
    (None, r"t\.jsonl:2: message r1: has the same role \('assistant'\)"),
    (None, r"t\.jsonl:2: message p: the root message of a tree must have role 'prompter'"),
    (None, r"t\.jsonl:2: message r1: 'replies' is not a list"),
])
def test_malformed_trees_name_the_line_and_message(tmp_path, line, message):
    good = _msg("p", "prompter", "Q", replies=[_msg("r1", "assistant", "A", 0)])
    if line is None:      # build a bad tree from the message the test expects to see named
        bad = json.loads(json.dumps(good))
        reply = bad["replies"][0]
        if "'rank'" in message:
            reply["rank"] = "first"
        elif "'text'" in message:
            del reply["text"]
        elif "'role'" in message:
            reply["role"] = "bot"
        elif "message_id" in message:
            del reply["message_id"]
        elif "same role" in message:
            reply["replies"] = [_msg("r2", "assistant", "B")]
            reply["message_id"], reply["replies"][0]["message_id"] = "x", "r1"
        elif "root message" in message:
            bad["role"] = "assistant"
            bad["replies"] = []
        elif "'replies'" in message:
            reply["replies"] = "none"
        line = json.dumps({"message_tree_id": "p", "prompt": bad})
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"message_tree_id": "ok", "prompt": good}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        list(iter_trees(path))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(iter_trees(tmp_path / "nope.jsonl"))


# ----------------------------------------------------------------------------- EFT recipe

@pytest.mark.parametrize("scores,ranks,strict,expected", [
    ([5, 3, 1], [0, 1, 2], False, True),
    ([5, 3, 3], [0, 1, 2], False, True),     # a tie is not a contradiction...
    ([5, 3, 3], [0, 1, 2], True, False),     # ...unless strict
    ([4, 4, 4], [0, 1, 2], False, False),    # all equal: says nothing about the order
    ([3, 5, 1], [0, 1, 2], False, False),    # reply 1 scored above the human-best reply
    ([1, 5], [1, 0], True, True),            # ranks need not be sorted
    ([2, 3, 1], [0, 0, 1], True, True),      # human tie: any order of those two is fine
])
def test_scores_agree(scores, ranks, strict, expected):
    assert scores_agree(scores, ranks, strict=strict) is expected


def test_rebalance_caps_the_most_common_score_only():
    """Scores: 4 x6, 3 x2, 1 x1. Cap = ceil(1.0 * 2) = 2 -> keep 2 of the six 4s, all else."""
    ex = [{"i": i, "score": s} for i, s in enumerate([4, 4, 3, 4, 4, 1, 4, 3, 4.0])]
    out = rebalance_by_score(ex, max_ratio=1.0, seed=0)
    assert sorted(e["score"] for e in out) == [1, 3, 3, 4, 4]
    assert [e["i"] for e in out] == sorted(e["i"] for e in out)            # order kept
    assert out == rebalance_by_score(ex, max_ratio=1.0, seed=0)            # deterministic
    assert len(rebalance_by_score(ex, max_ratio=1.5)) == 3 + 3              # cap ceil(3.0) = 3
    same = [{"score": 4}] * 3
    assert rebalance_by_score(same) == same                                 # nothing to balance


GROUPS = [  # "Reply <k>" -> the fake judge gives k points
    {"id": "g1", "prompt": "Q1", "replies": ["Reply 5", "Reply 3", "Reply 1"], "ranks": [0, 1, 2],
     "reply_ids": ["g1a", "g1b", "g1c"]},                                  # agrees
    {"id": "g2", "prompt": "Q2", "replies": ["Reply 2", "Reply 4"], "ranks": [0, 1],
     "reply_ids": ["g2a", "g2b"]},                                         # disagrees
    {"id": "g3", "prompt": "Q3", "replies": ["Reply 4", "Reply x"], "ranks": [0, 1],
     "reply_ids": ["g3a", "g3b"]},                                         # one does not parse
    {"id": "g4", "prompt": "Q4", "replies": ["Reply 4", "Reply 4", "Reply 3"], "ranks": [0, 1, 2],
     "reply_ids": ["g4a", "g4b", "g4c"]},                                  # agrees unless strict
    {"id": "g5", "prompt": "Q5", "replies": ["Reply 4"], "ranks": [0], "reply_ids": ["g5a"]},
]


def fake_judge(calls):
    def judge_fn(prompts):
        calls.append(len(prompts))
        outs = []
        for p in prompts:
            k = re.search(r"Answer: Reply (\S+)", p).group(1)
            outs.append(f"Reasonable answer.\n**Score:** {k}/5\nHope this helps!")
        return outs
    return judge_fn


def test_build_eft_keeps_agreeing_sets_with_clean_score_endings(tmp_path):
    calls = []
    rows, stats = build_eft(GROUPS, fake_judge(calls), template=COMPACT_TEMPLATE, max_ratio=10.0,
                            batch_size=4, log_path=tmp_path / "log.jsonl")
    assert calls == [4, 4, 2]                     # 10 replies of the 4 ranked groups, by 4
    assert [r["id"] for r in rows] == ["g1a", "g1b", "g1c", "g4a", "g4b", "g4c"]
    assert [r["score"] for r in rows] == [5, 3, 1, 4, 4, 3]
    assert rows[0]["prompt"].startswith("Grade the answer") and "Answer: Reply 5" in rows[0]["prompt"]
    assert rows[0]["response"] == "Reasonable answer.\nScore: 5"
    assert stats == {"eft_groups": 4, "eft_groups_unparsed": 1, "eft_groups_agreeing": 2,
                     "eft_examples_before_rebalance": 6, "eft_examples": 6,
                     "eft_score_counts": {1: 1, 3: 2, 4: 2, 5: 1}}
    # resume: every judgement is in the log, so the judge is not called again
    again, _ = build_eft(GROUPS, lambda p: pytest.fail("judge called on resume"),
                         template=COMPACT_TEMPLATE, max_ratio=10.0, log_path=tmp_path / "log.jsonl")
    assert again == rows
    assert len(read_jsonl(tmp_path / "log.jsonl", required=("reply_id", "judgement"))) == 10


def test_build_eft_strict_and_rebalance():
    rows, _ = build_eft(GROUPS, fake_judge([]), template=COMPACT_TEMPLATE, strict=True, max_ratio=10.0)
    assert [r["id"] for r in rows] == ["g1a", "g1b", "g1c"]
    # default max_ratio=1: scores 5,3,1,4,4,3 -> 3 and 4 both twice (the "most common" is the
    # lower score on a tie), cap = ceil(1 * 2) = 2 -> nothing removed
    rows, stats = build_eft(GROUPS, fake_judge([]), template=COMPACT_TEMPLATE)
    assert stats["eft_examples"] == 6


def test_build_eft_rejects_a_judge_returning_the_wrong_number_of_texts():
    with pytest.raises(RuntimeError, match="returned 0 texts"):
        build_eft(GROUPS, lambda prompts: [], template=COMPACT_TEMPLATE)


def test_main_with_a_judge_model_writes_eft_files(tmp_path):
    """End to end with a tiny random Llama as the 'SFT baseline' (its judgements rarely parse, so
    eft.jsonl may be empty; the point is the plumbing: every reply judged, logged, resumable)."""
    torch = pytest.importorskip("torch")
    from srlm.checkpoint import save_model
    from srlm.model import Llama, ModelArgs
    sp = small_tokenizer()
    torch.manual_seed(0)
    save_model(Llama(ModelArgs.preset("tiny", vocab_size=1000, max_seq_len=256)),
               tmp_path / "model", tokenizer_path=sp)
    roots = [_msg(f"p{i}", "prompter", f"Question {i}?", replies=[
        _msg(f"a{i}", "assistant", "Good answer.", 0), _msg(f"b{i}", "assistant", "Bad.", 1)])
        for i in range(3)]
    trees = _write_trees(tmp_path / "t.jsonl", roots)
    argv = ["--trees", str(trees), "--out-dir", str(tmp_path / "out"), "--eval-fraction", "0",
            "--judge-model", str(tmp_path / "model"), "--template", "compact",
            "--max-new-tokens", "4", "--device", "cpu"]
    stats = main(argv)
    log = read_jsonl(tmp_path / "out" / "eft_judgements.jsonl", required=("reply_id", "judgement"))
    assert sorted(r["reply_id"] for r in log) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert stats["eft_groups"] == 3 and (tmp_path / "out" / "eft.jsonl").is_file()
    assert stats["eft_examples"] == len(read_jsonl(tmp_path / "out" / "eft.jsonl"))
    assert main(argv) == stats                      # resumed from the log: same result
    assert len(read_jsonl(tmp_path / "out" / "eft_judgements.jsonl")) == 6
    # another judge setting: nothing logged under the old one is reused, every reply is judged again
    main(argv + ["--seed", "1"])
    log = read_jsonl(tmp_path / "out" / "eft_judgements.jsonl")
    assert len(log) == 12 and len({r["input_hash"] for r in log}) == 12
    assert main(argv + ["--seed", "1"])["eft_groups"] == 3
    assert len(read_jsonl(tmp_path / "out" / "eft_judgements.jsonl")) == 12  # now resumed


def test_build_eft_reuses_a_logged_judgement_only_for_the_same_inputs(tmp_path):
    """The log is keyed by input_hash (judge prompt + context), not by reply id alone."""
    log = tmp_path / "log.jsonl"
    calls = []

    def judge(prompts):
        calls.append(len(prompts))
        return ["Score: 5" if "Good" in p else "Score: 1" for p in prompts]

    groups = [{"id": "p", "tree_id": "t", "prompt": "Q?", "replies": ["Good.", "Bad."], "ranks": [0, 1],
               "reply_ids": ["a", "b"]}]
    build_eft(groups, judge, template=COMPACT_TEMPLATE, log_path=log, context={"model": "m1"})
    build_eft(groups, judge, template=COMPACT_TEMPLATE, log_path=log, context={"model": "m1"})
    assert calls == [2]                                           # second run: all from the log
    edited = [{**groups[0], "replies": ["Good.", "Worse."]}]       # reply b's text changed
    rows, _ = build_eft(edited, judge, template=COMPACT_TEMPLATE, log_path=log, context={"model": "m1"})
    assert calls == [2, 1] and "Worse." in rows[1]["prompt"]
    build_eft(edited, judge, template=COMPACT_TEMPLATE, log_path=log, context={"model": "m2"})
    assert calls == [2, 1, 2]                                     # another judge model: both again
    log.write_text('{"reply_id": "a", "judgement": "Score: 0"}\n')  # a row without input_hash
    build_eft(groups, judge, template=COMPACT_TEMPLATE, log_path=log, context={"model": "m1"})
    assert calls == [2, 1, 2, 2]
