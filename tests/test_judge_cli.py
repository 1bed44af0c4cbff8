"""Tests for judge.py (the CLI) end to end with a tiny random Llama + the committed SentencePiece
model; the judging itself is tested with a fake judge in tests/test_pairs.py.

    python -m pytest -q tests/test_judge_cli.py
"""
import json

import pytest
import torch

import judge
from conftest import small_tokenizer
from srlm.io import read_jsonl, write_jsonl
from test_pairs import CANDIDATES


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    sp = small_tokenizer()
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
    with pytest.raises(ValueError, match="--min-margin"):
        judge.main(["--model", "nowhere", "--input", str(tmp_path / "c.jsonl"), "--min-margin", "-1"])
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
