"""Tests for judge.py (the CLI): judging with a fake judge (resume, sharding, pairs) and end to end
with a tiny random Llama + the small shared SentencePiece model.

    python -m pytest -q tests/test_judge_cli.py
"""
import json
import re

import pytest
import torch

import judge
from conftest import shared_file
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
    assert calls == [(6, 10), (6, 11), (4, 12)]                 # 8 candidates in chunks of 3, x2
    assert rows == read_jsonl(out) and len(rows) == 8
    assert [(r["id"], r["candidate_index"]) for r in rows] == \
        [("p1", 0), ("p1", 1), ("p1", 2), ("p2", 0), ("p2", 1), ("p3", 0), ("p3", 1), ("p3", 2)]
    assert rows[1] == {"id": "p1", "candidate_index": 1, "judgements": ["Fine.\nScore: 5"] * 2,
                       "scores": [5.0, 5.0], "mean_score": 5.0}
    assert rows[5]["scores"] == [None, None] and rows[5]["mean_score"] is None
    assert not list(tmp_path.glob("*.partial"))                 # merged and removed
    pairs, summary = pairs_from_judgements(CANDIDATES, rows, 1)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == \
        [("p1", "score 5", "score 2"), ("p3", "score 1", "score 0")]   # p2 is a tie
    assert summary["parse_failure_rate"] == 2 / 16


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
    assert not out.exists() and len(read_jsonl(tmp_path / "judgements.jsonl.rank0.partial")) == 3
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
    with pytest.raises(DataError, match=r"record 1 \(id 'a'\): 'candidates' must be a list"):
        load_candidates(path)
    write_jsonl(path, [CANDIDATES[0], CANDIDATES[0]])
    with pytest.raises(DataError, match="duplicate id"):
        load_candidates(path)
    write_jsonl(path, [{"prompt": "q", "replies": ["a", "b"], "ranks": [0]}])
    with pytest.raises(DataError, match="'ranks' must be numbers, one per reply"):
        load_groups(path)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    sp = shared_file("sentencepiece_unigram_1000.model")
    from srlm.checkpoint import save_model
    from srlm.model import Llama, ModelArgs
    torch.manual_seed(0)
    model = Llama(ModelArgs.preset("tiny", vocab_size=1000, max_seq_len=256))
    path = tmp_path_factory.mktemp("judge_cli") / "model"
    save_model(model, path, tokenizer_path=sp)
    return path


def test_main_end_to_end_with_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    cands = tmp_path / "candidates.jsonl"
    write_jsonl(cands, CANDIDATES[:2])
    argv = ["--model", str(tiny_model_dir), "--input", str(cands), "--k", "2", "--template", "compact",
            "--max-new-tokens", "6", "--chunk-size", "2", "--device", "cpu", "--seed", "3"]
    summary = judge.main(argv)
    rows = read_jsonl(tmp_path / "judgements.jsonl",
                      required=("id", "candidate_index", "judgements", "scores", "mean_score"))
    assert [(r["id"], r["candidate_index"]) for r in rows] == [("p1", 0), ("p1", 1), ("p1", 2),
                                                               ("p2", 0), ("p2", 1)]
    assert all(len(r["judgements"]) == 2 and len(r["scores"]) == 2 for r in rows)
    assert all(isinstance(t, str) for r in rows for t in r["judgements"])
    assert summary["judgements"] == 10 and summary["prompts"] == 2
    pairs = read_jsonl(tmp_path / "pairs.jsonl")          # a random model rarely writes a score
    assert all({"id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"} <= set(p)
               for p in pairs)
    assert json.loads((tmp_path / "judge_summary.json").read_text()) == summary
    first = (tmp_path / "judgements.jsonl").read_text()

    # second run: nothing is generated again, same outputs
    import srlm.sampling
    monkeypatch.setattr(srlm.sampling, "generate", lambda *a, **k: pytest.fail("judged again"))
    assert judge.main(argv) == summary
    assert (tmp_path / "judgements.jsonl").read_text() == first


def test_main_same_seed_same_judgements(tiny_model_dir, tmp_path):
    outs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        write_jsonl(tmp_path / run / "candidates.jsonl", CANDIDATES[:1])
        judge.main(["--model", str(tiny_model_dir), "--input", str(tmp_path / run / "candidates.jsonl"),
                    "--template", "compact", "--max-new-tokens", "5", "--device", "cpu", "--seed", "7"])
        outs.append(read_jsonl(tmp_path / run / "judgements.jsonl"))
    assert outs[0] == outs[1]
    texts = outs[0][0]["judgements"]
    assert len(texts) == 3 and len(set(texts)) > 1       # K samples differ (temperature 0.7)


def test_main_eval_writes_metrics(tiny_model_dir, tmp_path, capsys):
    groups = tmp_path / "eval_groups.jsonl"
    write_jsonl(groups, [{"id": "g1", "prompt": "Q?", "replies": ["A", "B", "C"], "ranks": [0, 1, 2]},
                         {"id": "g2", "prompt": "R?", "replies": ["D", "E"], "ranks": [1, 0]}])
    metrics = judge.main(["--eval", "--model", str(tiny_model_dir), "--input", str(groups), "--k", "1",
                          "--template", "compact", "--max-new-tokens", "4", "--device", "cpu"])
    saved = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert saved == metrics   # what main returns is what it wrote
    assert set(saved) >= {"pairwise_accuracy", "exact_match", "five_best", "spearman", "kendall_tau",
                          "parse_failure_rate", "groups", "replies_unscored"}
    assert saved["replies_unscored"] == round(5 * saved["parse_failure_rate"])   # K = 1
    assert all(v is None or v == v for v in saved.values())   # no NaN in the JSON file
    assert len(read_jsonl(tmp_path / "eval_judgements.jsonl")) == 5
    assert "| pairwise accuracy |" in capsys.readouterr().out


def test_main_rejects_bad_options_before_loading(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", CANDIDATES)
    with pytest.raises(ValueError, match="--min-valid"):
        judge.main(["--model", "nowhere", "--input", str(tmp_path / "c.jsonl"), "--k", "2",
                    "--min-valid", "3"])
    with pytest.raises(ValueError, match="invalid score pattern"):
        judge.main(["--model", "nowhere", "--input", str(tmp_path / "c.jsonl"), "--score-pattern", "("])


def test_model_judge_leaves_prompts_that_fill_the_context_unjudged(tiny_model_dir):
    from srlm.judge import make_model_judge
    from srlm.checkpoint import load_model
    from srlm.tokenizer import Tokenizer
    model = load_model(tiny_model_dir)
    judge_fn = make_model_judge(model, Tokenizer.from_dir(tiny_model_dir), max_new_tokens=3)
    long_prompt = "word " * 400                         # > 256 tokens: no room at all
    texts = judge_fn(["short question", long_prompt, "another"], seed=1)
    assert len(texts) == 3 and texts[1] == "" and texts[0] != "" and texts[2] != ""
