"""Tests for srlm/loop.py: the whole loop on a micro config, and kill + resume.

The micro base model is random (dim 32, one layer) with the built-in tokenizer; a random model
never writes "Score: N", so these runs read the judge's score with a custom pattern (any digit
0-5 in the judgement, a feature users have for their own judge formats). That keeps the loop's
every step real, pairs included, in seconds.

    python -m pytest -q tests/test_loop.py
"""
import json
from pathlib import Path

import pytest
import torch

from conftest import byte_level_bpe
from srlm import loop
from srlm.io import read_jsonl, write_jsonl
from srlm.checkpoint import load_model, save_model
from srlm.model import Llama, ModelArgs
from srlm.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    if not (DATA / "tokenizer.model").is_file():
        pytest.skip("data/ has not been built")
    root = tmp_path_factory.mktemp("micro")
    torch.manual_seed(0)
    m0 = Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=512))
    sp = Tokenizer(DATA / "tokenizer.model").sp
    with torch.no_grad():  # nudge the head towards the digits 0-5, so judgements carry numbers to read
        for d in range(6):
            m0.output.weight[sp.piece_to_id(str(d))] += 0.5 * torch.randn(32)
    save_model(m0, root / "m0", tokenizer_path=DATA / "tokenizer.model")
    for name, n in [("ift", 24), ("eft", 24), ("seed_prompts", 24), ("eval_prompts", 6), ("eval_groups", 3)]:
        write_jsonl(root / f"{name}.jsonl", read_jsonl(DATA / f"{name}.jsonl")[:n])
    return root


def loop_args(micro, run_dir):
    return ["--run-dir", str(run_dir), "--base-model", str(micro / "m0"), "--settings", "tiny",
            "--ift", str(micro / "ift.jsonl"), "--eft", str(micro / "eft.jsonl"),
            "--seed-prompts", str(micro / "seed_prompts.jsonl"), "--eval-prompts", str(micro / "eval_prompts.jsonl"),
            "--eval-groups", str(micro / "eval_groups.jsonl"), "--num-prompts", "4", "--n-candidates", "3",
            "--n-judgements", "2", "--sft-epochs", "1", "--sft-lr", "1e-4", "--dpo-epochs", "2", "--sft-batch-size", "8",
            "--dpo-batch-size", "2", "--max-new-tokens", "6", "--judge-max-new-tokens", "6",
            "--prompt-max-new-tokens", "12", "--eval-max-new-tokens", "6", "--score-pattern", "(?P<score>[0-5])",
            "--prompt-model", "current", "--device", "cpu"]  # M_t writes prompts: the case that loads least


ARTIFACTS = ["iter1/prompts.jsonl", "iter1/candidates.jsonl", "iter1/judgements.jsonl", "iter1/pairs.jsonl",
             "iter2/prompts.jsonl", "iter2/candidates.jsonl", "iter2/judgements.jsonl", "iter2/pairs.jsonl"]


@pytest.fixture(scope="module")
def uninterrupted(micro):
    run_dir = micro / "run_a"
    loads = []  # every model the loop loads to sample from, in order
    real = loop.load_for_inference
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "load_for_inference", lambda path, *a, **k: loads.append(Path(path)) or real(path, *a, **k))
        results = loop.main(loop_args(micro, run_dir))
    return run_dir, results, loads


def weights(model_dir):
    from safetensors.torch import load_file

    return load_file(Path(model_dir) / "model.safetensors")


def test_whole_loop_writes_every_artifact(uninterrupted):
    run_dir, results, _ = uninterrupted
    assert set(results) == {"m1", "m2", "m3"}
    for rel in ARTIFACTS + ["m1/config.json", "iter1/model/config.json", "iter2/model/config.json",
                            "eval/m3.json", "results.json", "results.md", "settings.json"]:
        assert (run_dir / rel).exists(), rel
    for t in (1, 2):
        it = run_dir / f"iter{t}"
        prompts, cands = read_jsonl(it / "prompts.jsonl"), read_jsonl(it / "candidates.jsonl")
        assert [r["id"] for r in cands] == [r["id"] for r in prompts]  # every prompt, in order
        assert all(len(r["candidates"]) == 3 for r in cands)  # --n-candidates 3
        # The pairs, rebuilt here from the judgements: per prompt, the mean of the parsed scores of
        # each candidate (one answer written twice counts once, at the mean of its two means);
        # chosen = the best, rejected = the worst, no pair on a tie.
        scores = {(j["id"], j["candidate_index"]): j["scores"] for j in read_jsonl(it / "judgements.jsonl")}
        expected = []
        for r in cands:
            by_text = {}
            for i, c in enumerate(r["candidates"]):
                valid = [x for x in scores[(r["id"], i)] if x is not None]
                if valid:
                    by_text.setdefault(c.strip(), []).append(sum(valid) / len(valid))
            means = [sum(v) / len(v) for v in by_text.values()]
            if len(means) >= 2 and max(means) > min(means):
                expected.append((r["id"], max(means), min(means)))
        pairs = read_jsonl(it / "pairs.jsonl")
        assert [(p["id"], p["chosen_score"], p["rejected_score"]) for p in pairs] == expected
        assert results[f"m{t + 1}"]["data"]["pairs"] == len(pairs)
    for name in ("m2", "m3"):
        assert set(results[name]["vs_m1"]) >= {"win", "tie", "loss"}
    table = (run_dir / "results.md").read_text()
    assert "| M1 |" in table and "| M3 |" in table
    # DPO moved M2 the way its loss asks: on iteration 1's pairs, the implicit reward margin
    # [log pi(chosen) - log pi_ref(chosen)] - [log pi(rejected) - log pi_ref(rejected)], reference = M1,
    # is positive on average (it is 0 for M2 = M1).
    from srlm.data import collate_pairs, tokenize
    from srlm.logprobs import LogprobModel

    tok = Tokenizer(run_dir / "m1" / "tokenizer.model")
    examples, _ = tokenize(read_jsonl(run_dir / "iter1/pairs.jsonl"), "dpo", tok, 512)
    tokens, mask = collate_pairs(examples, tok.pad_id)  # (2B, T): chosen rows, then rejected rows
    with torch.no_grad():
        m1 = LogprobModel(load_model(run_dir / "m1").eval(), impl="torch")(tokens, mask)
        m2 = LogprobModel(load_model(run_dir / "iter1/model").eval(), impl="torch")(tokens, mask)
    B = len(examples)
    margin = (m2[:B] - m1[:B]) - (m2[B:] - m1[B:])  # (B,)
    assert margin.mean() > 0


def test_each_model_is_loaded_once(uninterrupted):
    """M1 is loaded for its evaluation and kept for iteration 1's prompts, candidates and
    judgements; M2 likewise for iteration 2; M3 only for its evaluation."""
    run_dir, _, loads = uninterrupted
    assert loads == [run_dir / "m1", run_dir / "iter1/model", run_dir / "iter2/model"]


def test_rerun_of_a_finished_loop_changes_nothing(micro, uninterrupted):
    run_dir, _, _ = uninterrupted
    before = {rel: (run_dir / rel).read_bytes() for rel in ARTIFACTS}
    loop.main(loop_args(micro, run_dir))
    assert {rel: (run_dir / rel).read_bytes() for rel in ARTIFACTS} == before


class Killed(Exception):
    pass


def kill_after(monkeypatch, module, name, calls):
    """Make module.name raise Killed on its `calls`-th call (a kill in the middle of a step)."""
    original = getattr(module, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise Killed(f"killed in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_killed_during_generation_and_dpo_then_resumed_equals_uninterrupted(micro, uninterrupted, monkeypatch):
    from srlm import candidates

    run_a, _, _ = uninterrupted
    run_b = micro / "run_b"
    args = loop_args(micro, run_b)
    # 1) killed while iteration 1 samples its candidates (after it wrote the new prompts)
    with monkeypatch.context() as m:
        kill_after(m, candidates, "generate", 1)
        with pytest.raises(Killed):
            loop.main(args)
    assert (run_b / "iter1/prompts.jsonl").exists() and not (run_b / "iter1/candidates.jsonl").exists()
    # 2) killed in the middle of iteration 1's DPO (after one optimizer step)
    with monkeypatch.context() as m:
        kill_after(m, torch.optim.AdamW, "step", 2)
        with pytest.raises(Killed):
            loop.main(args)
    assert (run_b / "iter1/pairs.jsonl").exists() and not (run_b / "iter1/model/config.json").exists()
    # 3) resumed to the end
    loop.main(args)
    def content(path):  # rows name the model directory they came from, which differs between the two runs
        return [{k: v for k, v in row.items() if k != "model"} for row in read_jsonl(path)]

    for rel in ARTIFACTS:
        assert content(run_b / rel) == content(run_a / rel), rel
    wa, wb = weights(run_a / "iter2/model"), weights(run_b / "iter2/model")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    ra = json.loads((run_a / "results.json").read_text())
    rb = json.loads((run_b / "results.json").read_text())
    assert ra == rb


def test_results_table_layout():
    table = loop.results_table({"m1": {"instruction_following": {"answer_correct": 0.5, "mean_grade": 2.5,
                                                                  "exact_accuracy": 0.25, "mean_response_chars": 4.0},
                                       "reward_modelling": {"pairwise_accuracy": 0.5, "spearman": float("nan")},
                                       "instruction_following_more": {"answer_correct": 0.375},
                                       "own_samples": {"auc": 0.625}}})
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert "| M1 | 50.0% | 37.5% | 25.0% | 2.50 |" in row and "| 50.0% |" in row and "| 0.625 |" in row
    assert "| answer-correct | answer-correct, more prompts | exact acc |" in header


def test_more_prompts_default_follows_the_eval_prompts():
    """The second prompt set defaults to the world's own only when the first one is the world's too."""
    from argparse import Namespace
    world_prompts = str(loop.DATA / "eval_prompts.jsonl")
    assert loop.more_prompts(Namespace(eval_prompts=world_prompts, eval_prompts_more=None)) == \
        str(loop.DATA / "eval_prompts_more.jsonl")
    assert loop.more_prompts(Namespace(eval_prompts="oasst/eval.jsonl", eval_prompts_more=None)) is None
    assert loop.more_prompts(Namespace(eval_prompts=world_prompts, eval_prompts_more="none")) is None
    assert loop.more_prompts(Namespace(eval_prompts="x.jsonl", eval_prompts_more="y.jsonl")) == "y.jsonl"


def test_pairs_vs_grader_hand_counted():
    """World grader: 3 + 5 = 8, so "8" is right and "6", "9" are wrong, in any wording; a prompt
    that is not a world question is ungraded."""
    q = "What is 3 + 5?"
    pairs = [{"prompt": q, "chosen": "8", "rejected": "6"},                  # right over wrong
             {"prompt": q, "chosen": "It is 9.", "rejected": "8"},           # wrong over right
             {"prompt": q, "chosen": "8", "rejected": "I think it is 8."},    # both right (style only)
             {"prompt": q, "chosen": "6", "rejected": "Maybe 9?"},            # both wrong
             {"prompt": q, "chosen": "The answer is 8.", "rejected": "9"},    # right over wrong
             {"prompt": "Tell me a joke.", "chosen": "a", "rejected": "b"}]  # not a world question
    assert loop.pairs_vs_grader(pairs) == {"right_wrong": 2, "wrong_right": 1, "both_right": 1,
                                           "both_wrong": 1, "ungraded": 1}


def test_the_grader_never_reaches_training(micro, monkeypatch):
    """With every grader entry point of srlm.world raising, the loop's training steps (SFT, prompts,
    candidates, judging, pairs, DPO) still run, to the same pairs and weights as an ordinary run;
    only the evaluation (skipped here) may grade."""
    from srlm import world

    ref_dir = micro / "grader_ref"
    loop.main(loop_args(micro, ref_dir) + ["--skip-eval"])

    def boom(*a, **k):
        raise AssertionError("the world's grader was called during training")

    for name in ("grade", "criteria", "candidates", "answer_correct", "is_exact", "parse_task", "grade_prompt"):
        monkeypatch.setattr(world, name, boom)
    run_dir = micro / "grader_free"
    loop.main(loop_args(micro, run_dir) + ["--skip-eval"])
    for rel in ARTIFACTS:  # the same bytes, up to the run directory's own name (prompts record their writer)
        assert (run_dir / rel).read_text().replace(str(run_dir), str(ref_dir)) == (ref_dir / rel).read_text(), rel
    wa, wb = weights(ref_dir / "iter2" / "model"), weights(run_dir / "iter2" / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_whole_loop_under_torchrun_matches_one_process(micro):
    """`torchrun --nproc_per_node 2 -m srlm.loop ...` (gloo): every step shards over the two ranks
    (SFT/DPO under FSDP2, generation and judging by prompt). Without dropout (whose masks depend on
    which rank draws them), M1 equals the one-process M1 within fp32 tolerance (the gradient
    reduction sums in another order), and with the same seeds the sampled files are the same."""
    import os
    import shutil
    import subprocess

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    no_dropout = ["--sft-dropout", "0.0", "--skip-eval"]
    run_a, run_b = micro / "run_one_process", micro / "run_torchrun"
    loop.main(loop_args(micro, run_a) + no_dropout)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [torchrun, "--nproc_per_node", "2", "--standalone", "-m", "srlm.loop",
           *loop_args(micro, run_b), *no_dropout]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k, v in weights(run_a / "m1").items():
        torch.testing.assert_close(weights(run_b / "m1")[k], v, rtol=0, atol=1e-5)
    def rows(run, rel):  # the rows minus the writer's path, which names the run directory, and minus
        # input_hash, which hashes M1's exact weights (equal here only to 1e-5 across world sizes)
        return [{k: v for k, v in r.items() if k not in ("model", "input_hash")} for r in read_jsonl(run / rel)]

    for rel in ARTIFACTS:
        assert rows(run_b, rel) == rows(run_a, rel), rel
    for k, v in weights(run_a / "iter2/model").items():
        torch.testing.assert_close(weights(run_b / "iter2/model")[k], v, rtol=0, atol=1e-5)


def test_prompt_model_base_writes_prompts_with_m0(micro):
    """--prompt-model base: M0, not the current model, writes every iteration's prompts (each row
    records its writer), while candidates still come from the current model."""
    run_dir = micro / "run_base_writer"
    loop.main(loop_args(micro, run_dir) + ["--prompt-model", "base", "--iterations", "1", "--skip-eval"])
    rows = read_jsonl(run_dir / "iter1/prompts.jsonl")
    assert rows and {r["model"] for r in rows} == {str(micro / "m0")}
    summary = json.loads((run_dir / "iter1/prompts_summary.json").read_text())
    assert summary["written"] == len(rows) and summary["attempts"] >= len(rows)


def test_judge_reply_after_reaches_the_judge_and_the_evaluation(micro, monkeypatch):
    """--judge-reply-after is recorded with the run and handed to both judges: the loop's
    (JudgeSettings) and the evaluation's (own samples)."""
    run_dir, seen = micro / "run_reply_after", {}

    class Stop(Exception):
        pass

    def fake_write_pairs(model, tokenizer, candidates, judgements, pairs, settings, **kw):
        seen["pairs"] = settings.reply_after
        raise Stop

    def fake_evaluate(*args, **kw):
        seen["eval"] = kw["reply_after"]
        return {}

    monkeypatch.setattr(loop, "write_pairs", fake_write_pairs)
    monkeypatch.setattr(loop, "evaluate_model", fake_evaluate)
    with pytest.raises(Stop):
        loop.main(loop_args(micro, run_dir) + ["--judge-reply-after", "That gives ", "--iterations", "1"])
    assert seen == {"eval": "That gives ", "pairs": "That gives "}
    assert json.loads((run_dir / "settings.json").read_text())["judge_reply_after"] == "That gives "


def test_meta_format_base_model_with_separate_tokenizer(micro, tmp_path):
    """M0 in Meta's layout (params.json + consolidated.00.pth, no tokenizer.model inside, as Meta
    ships it): --tokenizer supplies it; SFT turns M0 into an HF M1 that carries the tokenizer on."""
    m0 = load_model(micro / "m0")
    meta = tmp_path / "m0_meta"
    meta.mkdir()
    torch.save(m0.state_dict(), meta / "consolidated.00.pth")
    a = m0.args
    (meta / "params.json").write_text(json.dumps(dict(
        dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, vocab_size=-1,
        multiple_of=16, ffn_dim_multiplier=None, norm_eps=a.norm_eps)))  # micro's FFN rule: 96 wide
    run_dir = tmp_path / "run"
    args = loop_args(micro, run_dir) + ["--iterations", "1", "--skip-eval", "--prompt-model", "base"]
    args[args.index("--base-model") + 1] = str(meta)
    loop.main(args + ["--tokenizer", str(DATA / "tokenizer.model")])
    assert (run_dir / "m1" / "tokenizer.model").is_file() and (run_dir / "iter1/model/config.json").is_file()
    assert {r["model"] for r in read_jsonl(run_dir / "iter1/prompts.jsonl")} == {str(meta)}


def test_whole_loop_on_a_tokenizer_json_chatml_model(micro, tmp_path):
    """M0 with a byte-level BPE tokenizer.json and a ChatML template (no tokenizer.model): every step
    of the loop runs, and every model it writes keeps that tokenizer and chat format."""
    from srlm.tokenizer import load_tokenizer

    texts = [r.get("prompt", "") + " " + r.get("response", "") for name in ("ift", "eft", "seed_prompts")
             for r in read_jsonl(micro / f"{name}.jsonl")]
    tk = byte_level_bpe(texts, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=600)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tk.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    (tok_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    torch.manual_seed(0)
    m0 = Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tk.get_vocab_size(), multiple_of=16,
                         max_seq_len=512))
    with torch.no_grad():
        for d in range(6):
            m0.output.weight[tk.token_to_id(str(d))] += 0.5 * torch.randn(32)
    save_model(m0, tmp_path / "m0", tokenizer_path=tok_dir / "tokenizer.json")
    assert load_tokenizer(tmp_path / "m0").chat.name == "chatml"

    args = loop_args(micro, tmp_path / "run")
    args[args.index("--base-model") + 1] = str(tmp_path / "m0")
    results = loop.main(args)
    assert set(results) == {"m1", "m2", "m3"}
    for model in ("m1", "iter1/model", "iter2/model"):
        d = tmp_path / "run" / model
        assert (d / "tokenizer.json").is_file() and not (d / "tokenizer.model").exists()
        assert load_tokenizer(d).chat.name == "chatml"
