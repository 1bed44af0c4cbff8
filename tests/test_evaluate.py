"""Tests for srlm/evaluate.py: the evaluation's counts on hand-written answers and judgements, and
its cache, reused only while the model, the evaluation files and the settings are unchanged.

    python -m pytest -q tests/test_evaluate.py
"""
import json

import pytest
import torch

from conftest import small_tokenizer
from srlm import evaluate
from srlm.evaluate import evaluate_model, head_to_head
from srlm.io import write_jsonl


def test_head_to_head_hand_counted():
    a = [{"prompt": "p1", "grade": 5}, {"prompt": "p2", "grade": 2}, {"prompt": "p3", "grade": 3},
         {"prompt": "p4", "grade": 0}]
    b = [{"prompt": "p1", "grade": 3}, {"prompt": "p2", "grade": 2}, {"prompt": "p3", "grade": 4},
         {"prompt": "p4", "grade": 1}]
    assert head_to_head(a, b) == {"win": 0.25, "tie": 0.25, "loss": 0.5, "prompts": 4}


def test_instruction_following_leaves_open_ended_prompts_ungraded(monkeypatch):
    """A world prompt is graded ("8" to 3 + 5 is exact: 5; "Maybe 8?" is right but hedged: 3); an
    open-ended one (real data) is kept ungraded and left out of the means and of head-to-head."""
    from srlm import evaluate
    q = "What is 3 + 5?"
    monkeypatch.setattr(evaluate, "_greedy", lambda model, tok, prompts, n, bs: ["8", "Why did the chicken...", "Maybe 8?"])
    prompts = [{"id": "a", "prompt": q}, {"id": "b", "prompt": "Tell me a joke."}, {"id": "c", "prompt": q}]
    metrics, rows = evaluate.instruction_following(None, None, prompts, 8, 2)
    # graded: "8" (right, exact, 5) and "Maybe 8?" (right, hedged, 3)
    assert metrics["answer_correct"] == 1.0 and metrics["exact_accuracy"] == 0.5 and metrics["mean_grade"] == 4.0
    assert metrics["graded"] == 2 and metrics["ungraded"] == 1
    assert rows[1]["grade"] is None and rows[1]["correct"] is None and rows[1]["response"] == "Why did the chicken..."
    other = [{"prompt": q, "grade": 2}, {"prompt": "Tell me a joke.", "grade": None}]
    assert head_to_head(rows[:2], other) == {"win": 1.0, "tie": 0.0, "loss": 0.0, "prompts": 1}


def test_own_samples_auc_hand_counted(monkeypatch):
    """Two prompts, 3 samples each; the judge's scores against the grader's right/wrong:
    prompt 1: right 5, wrong 2, wrong 5 -> pairs (5>2) win, (5=5) tie; prompt 2: all wrong, no pair.
    AUC = (1 + 0.5) / 2 = 0.75; right over wrong 1/2; sampled answer-correct 1/6."""
    from srlm import evaluate, sampling
    q = "What is 3 + 5?"                   # right: 8
    q2 = "What is 4 + 5?"                  # right: 9
    answers = ["8", "6", "9", "4", "2", "It is 7."]
    monkeypatch.setattr(sampling, "generate", lambda model, prompts, n, **kw: [[i] for i in range(len(prompts))])
    judged = {"8": "Score: 5", "6": "Score: 2", "9": "Score: 5", "4": "Score: 1", "2": "Score: 4", "It is 7.": "Score: 0"}

    class Tok:
        eos_id = 2

        def encode_prompt(self, text):
            return [0]

        def decode(self, ids):
            return answers[ids[0]]

    def fake_judge(model, tokenizer, **kw):
        return lambda prompts: [judged[p.split("Answer: ")[1].split("\n")[0]] for p in prompts]

    monkeypatch.setattr(evaluate, "make_model_judge", fake_judge)
    metrics, rows = evaluate.own_samples(None, Tok(), [{"prompt": q}, {"prompt": q2}], "Q: {prompt}\nAnswer: {response}\n",
                                         3, 0.7, 0.9, 8, 8, 4)
    assert metrics["auc"] == 0.75 and metrics["right_over_wrong"] == 0.5 and metrics["prompts_with_both"] == 1
    assert metrics["sampled_answer_correct"] == pytest.approx(1 / 6) and metrics["samples"] == 6
    assert rows[0]["correct"] == [True, False, False] and rows[1]["scores"] == [1.0, 4.0, 0.0]


def test_judge_samples_scores_given_answers(monkeypatch, tmp_path):
    """Another judge on the same answers: prompt 1 right "8" scored 2, wrong "6" scored 5 -> a loss;
    prompt 2 right "9" scored 5, wrong "4" and "It is 7." scored 1 and 5 -> a win and a tie.
    AUC = (0 + 1 + 0.5) / 3 = 0.5; right over wrong 1/3; 2 of 5 answers right."""
    from srlm import evaluate
    judged = {"8": "Score: 2", "6": "Score: 5", "9": "Score: 5", "4": "Score: 1", "It is 7.": "Score: 5"}
    monkeypatch.setattr(evaluate, "make_model_judge", lambda model, tokenizer, **kw:
                        lambda prompts: [judged[p.split("Answer: ")[1].split("\n")[0]] for p in prompts])
    samples = [{"prompt": "What is 3 + 5?", "answers": ["8", "6"]},
               {"prompt": "What is 4 + 5?", "answers": ["9", "4", "It is 7."]}]
    metrics, rows = evaluate.judge_samples(None, None, samples, "Q: {prompt}\nAnswer: {response}\n", 8, 4)
    assert metrics["auc"] == pytest.approx(0.5) and metrics["right_over_wrong"] == pytest.approx(1 / 3)
    assert metrics["prompts_with_both"] == 2 and metrics["sampled_answer_correct"] == pytest.approx(2 / 5)
    assert rows[1]["scores"] == [5.0, 1.0, 5.0] and rows[1]["correct"] == [True, False, False]


def test_judge_samples_with_reply_after_judges_final_answers_grades_whole_replies(monkeypatch):
    """Worked replies: the judge is shown only what follows "That gives " (its scores key on it),
    while the grader reads the whole reply. Right "...That gives 8." scored 5, wrong "...That
    gives 7." scored 2: AUC 1; the rows keep the whole replies."""
    from srlm import evaluate
    judged = {"8": "Score: 5", "7": "Score: 2"}
    monkeypatch.setattr(evaluate, "make_model_judge", lambda model, tokenizer, **kw:
                        lambda prompts: [judged[p.split("Answer: ")[1].split("\n")[0]] for p in prompts])
    replies = ["Ones 3 + 5 = 8. That gives 8.", "Ones 3 + 5 = 7. That gives 7."]
    metrics, rows = evaluate.judge_samples(None, None, [{"prompt": "What is 3 + 5?", "answers": replies}],
                                           "Q: {prompt}\nAnswer: {response}\n", 8, 4, reply_after="That gives ")
    assert metrics["auc"] == 1.0 and rows[0]["correct"] == [True, False] and rows[0]["answers"] == replies


def test_judge_samples_cli_refuses_bad_input_before_loading(tmp_path):
    from srlm import evaluate
    from srlm.io import DataError
    bad = tmp_path / "m1_own_samples.jsonl"
    bad.write_text('{"prompt": "What is 3 + 5?", "answers": ["8"]}\n{"prompt": "What is 4 + 5?", "answers": "9"}\n')
    with pytest.raises(DataError, match=r"m1_own_samples\.jsonl.*2.*answers"):
        evaluate.main(["--model", "nowhere", "--judge-samples", str(bad)])
    with pytest.raises(DataError, match="--name and --out-dir"):
        evaluate.main(["--model", "nowhere"])


@pytest.fixture
def tiny(tmp_path):
    """A random tiny model with the built-in tokenizer, and two world prompts and a ranked group."""
    from srlm.loading import load_for_inference
    from srlm.checkpoint import save_model
    from srlm.model import Llama, ModelArgs

    sp = small_tokenizer()
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_model(Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=128)),
                   tmp_path / f"m{seed}", tokenizer_path=sp)
    write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "What is 3 + 5?"}, {"id": "b", "prompt": "What is 2 + 2?"}])
    write_jsonl(tmp_path / "groups.jsonl", [{"prompt": "What is 3 + 5?", "replies": ["8", "6"], "ranks": [1, 2]}])
    return tmp_path, [load_for_inference(tmp_path / f"m{seed}") for seed in (0, 1)]


def test_evaluate_model_reuses_its_result_only_for_the_same_inputs(tiny, monkeypatch):
    root, (m0, m1) = tiny
    runs = []
    real = evaluate.instruction_following
    monkeypatch.setattr(evaluate, "instruction_following", lambda *a, **k: runs.append(1) or real(*a, **k))
    out = root / "eval"

    def run(model, **settings):
        return evaluate_model(*model, "m", out, root / "prompts.jsonl", root / "groups.jsonl",
                              max_new_tokens=3, judge_max_new_tokens=3, **settings)

    first = run(m0)
    assert len(runs) == 1 and first["instruction_following"]["graded"] == 2
    def same(a, b):  # NaN metrics (no ranked pairs here) compare equal as JSON text
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    stored = json.loads((out / "m.json").read_text())
    assert stored.pop("input_hash") and same(stored, first)
    assert same(run(m0), first) and len(runs) == 1                 # same inputs: the stored result
    run(m1)
    assert len(runs) == 2                                          # other weights: evaluated again
    run(m1, seed=1)
    assert len(runs) == 3                                          # another setting
    run(m1, seed=1)
    assert len(runs) == 3
    write_jsonl(root / "prompts.jsonl", [{"id": "a", "prompt": "What is 3 + 5?"}])
    assert run(m1, seed=1)["instruction_following"]["graded"] == 1 and len(runs) == 4  # the file changed
    (out / "m.json").write_text(json.dumps({**first}))             # a result without its input_hash
    run(m1, seed=1)
    assert len(runs) == 5
    # a second prompt set: graded on its own, its answers kept; its contents are part of the key
    write_jsonl(root / "more.jsonl", [{"id": "x", "prompt": "What is 2 + 2?"}, {"id": "y", "prompt": "Hi."},
                                      {"id": "z", "prompt": "What is 1 + 1?"}])
    more = run(m1, seed=1, more_prompts_file=root / "more.jsonl")
    assert len(runs) == 7                                          # both sets answered again
    assert more["instruction_following_more"]["graded"] == 2 and more["instruction_following_more"]["ungraded"] == 1
    assert [r["id"] for r in evaluate.read_jsonl(out / "m_answers_more.jsonl")] == ["x", "y", "z"]
    assert same(run(m1, seed=1, more_prompts_file=root / "more.jsonl"), more) and len(runs) == 7
    write_jsonl(root / "more.jsonl", [{"id": "x", "prompt": "What is 2 + 2?"}])
    assert run(m1, seed=1, more_prompts_file=root / "more.jsonl")["instruction_following_more"]["graded"] == 1
