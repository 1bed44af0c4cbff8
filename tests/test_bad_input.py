"""Bad input and kills, as a user meets them: every command line, run in-process (generate.py,
judge.py, train.py, python -m srlm.loop / srlm.oasst / srlm.evaluate / srlm.report / srlm.smollm2
/ data.build).

Each case runs a CLI through srlm.cli.run_cli (what `python generate.py ...` does) and checks
the exit code (2), the one line on stderr (file, line, key) and that the earlier output is
byte-for-byte intact. Then: resumed rows are reused only when their inputs are unchanged, a run
directory refuses other settings, and a kill between a summary and its output loses neither.
(The torn-line kill test is in tests/test_io.py, train.py's --out in tests/test_train.py.)

    python -m pytest -q tests/test_bad_input.py
"""
import json
import re
from pathlib import Path

import pytest
import torch

import generate
import judge
from conftest import small_tokenizer
from srlm import loop
from srlm.checkpoint import save_model
from srlm.cli import run_cli
from srlm.io import read_jsonl, write_jsonl
from srlm.model import Llama, ModelArgs

PROMPTS = [{"id": f"p{i}", "prompt": f"Question number {i}?"} for i in range(4)]
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bad_input") / "m"
    save_model(Llama(ModelArgs.preset("tiny", vocab_size=1000, max_seq_len=256)), path,
               tokenizer_path=small_tokenizer())
    return path


def oasst_trees(path: Path, n: int) -> Path:
    """n conversation trees in the OASST export layout: a prompt with two ranked English replies."""
    def msg(mid, role, text, rank=None, replies=()):
        return {"message_id": mid, "role": role, "text": text, "lang": "en", "rank": rank, "replies": list(replies)}

    trees = [{"message_tree_id": f"t{i}", "prompt": msg(f"p{i}", "prompter", f"Question {i}?", replies=[
        msg(f"a{i}", "assistant", f"A good answer to {i}.", 0), msg(f"b{i}", "assistant", "Not sure.", 1)])}
        for i in range(n)]
    path.write_text("".join(json.dumps(t) + "\n" for t in trees))
    return path


def fails(capsys, main, prog, argv) -> str:
    """Run a CLI that must refuse its input: exit code 2 and exactly one line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, prog, [str(a) for a in argv])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def responses(model_dir, inp, out, *extra):
    return [str(a) for a in ["--model", model_dir, "--task", "responses", "--input", inp, "--output", out, "--n", "2",
                             "--max-new-tokens", "4", "--batch-size", "8", "--device", "cpu", *extra]]


@pytest.fixture(scope="module")
def finished(model_dir, tmp_path_factory):
    """A folder with finished candidates, judgements, pairs and summary, to be kept intact."""
    d = tmp_path_factory.mktemp("finished")
    write_jsonl(d / "prompts.jsonl", PROMPTS)
    generate.main(responses(model_dir, d / "prompts.jsonl", d / "candidates.jsonl"))
    judge.main([str(a) for a in ["--model", model_dir, "--input", d / "candidates.jsonl", "--k", "1",
                                 "--max-new-tokens", "4", "--template", "compact", "--score-pattern",
                                 "(?P<score>[0-5])", "--device", "cpu"]])
    return d


# ---- generate.py ----
@pytest.mark.parametrize("content, message", [
    ("", r"prompts\.jsonl: no prompts in this file"),
    ('{"id": "p0", "prompt": "Only one?"}\n', r"candidates\.jsonl: would replace its 4 prompts' candidates with 1"),
    ('{"id": "p0", "prompt": "ok"}\n{"id": "p1", "prompt": 42}\n', r"prompts\.jsonl:2: key 'prompt' must be a string"),
    ('{"id": ["p0"], "prompt": "ok"}\n', r"prompts\.jsonl:1: key 'id' must be a string or an integer, got list"),
    ('{"id": "p0", "prompt": "ok"}\n{"id": "p0", "prompt": "again"}\n', r"prompts\.jsonl:2: key 'id': duplicate"),
    ('{"id": "p0", "prompt": "caf\xe9"}\n', r"prompts\.jsonl:1: not UTF-8"),
])
def test_generate_refuses_and_keeps_the_output(model_dir, finished, tmp_path, capsys, content, message):
    inp = tmp_path / "prompts.jsonl"
    inp.write_bytes(content.encode("latin-1"))
    before = snapshot(finished)
    line = fails(capsys, generate.main, "generate.py", responses(model_dir, inp, finished / "candidates.jsonl"))
    assert re.search(message, line), line
    assert snapshot(finished) == before


def test_generate_model_problems_are_one_line(model_dir, finished, tmp_path, capsys):
    line = fails(capsys, generate.main, "generate.py", responses(tmp_path / "nope", finished / "prompts.jsonl",
                                                                 tmp_path / "c.jsonl"))
    assert "nope: model directory not found" in line
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "hidden_size": "128"}))
    line = fails(capsys, generate.main, "generate.py", responses(bad, finished / "prompts.jsonl", tmp_path / "c.jsonl"))
    assert "config.json: key 'hidden_size' must be a positive integer, got '128'" in line
    (bad / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"][0] = float("inf")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    line = fails(capsys, generate.main, "generate.py", responses(bad, finished / "prompts.jsonl", tmp_path / "c.jsonl"))
    assert "model.safetensors: tensor 'norm.weight' holds non-finite values" in line
    assert not (tmp_path / "c.jsonl").exists()


def test_generate_seed_pool_types(model_dir, tmp_path, capsys):
    pool = tmp_path / "ift.jsonl"
    pool.write_text('{"prompt": "fine"}\n{"prompt": 42}\n')
    line = fails(capsys, generate.main, "generate.py", ["--model", model_dir, "--task", "prompts", "--seed-pool", pool,
                                                        "--output", tmp_path / "new.jsonl", "--device", "cpu"])
    assert "ift.jsonl:2: key 'prompt' must be a string, got int 42" in line


def test_generate_redoes_rows_whose_prompt_changed(model_dir, finished, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    for name in ("prompts.jsonl", "candidates.jsonl"):
        (d / name).write_bytes((finished / name).read_bytes())
    edited = [dict(p) for p in PROMPTS]
    edited[2]["prompt"] = "A different question?"
    write_jsonl(d / "prompts.jsonl", edited)
    summary = generate.main(responses(model_dir, d / "prompts.jsonl", d / "candidates.jsonl"))
    assert summary["redone_stale"] == 1 and summary["resumed"] == 3
    old, new = read_jsonl(finished / "candidates.jsonl"), read_jsonl(d / "candidates.jsonl")
    assert new[2]["prompt"] == "A different question?" and new[2]["input_hash"] != old[2]["input_hash"]
    assert [new[i] for i in (0, 1, 3)] == [old[i] for i in (0, 1, 3)]


# ---- judge.py ----
def test_judge_refuses_and_keeps_the_outputs(model_dir, finished, tmp_path, capsys):
    before = snapshot(finished)
    argv = ["--model", model_dir, "--judgements", finished / "judgements.jsonl", "--pairs", finished / "pairs.jsonl",
            "--k", "1", "--device", "cpu"]
    empty = tmp_path / "candidates.jsonl"
    empty.write_text("")
    assert "candidates.jsonl: no candidates in this file" in fails(capsys, judge.main, "judge.py",
                                                                   ["--input", empty, *argv])
    write_jsonl(empty, read_jsonl(finished / "candidates.jsonl")[:1])
    line = fails(capsys, judge.main, "judge.py", ["--input", empty, *argv])
    assert "judgements.jsonl: would replace its 8 judgement rows with 2" in line
    groups = tmp_path / "groups.jsonl"
    groups.write_text('{"prompt": 7, "replies": ["a", "b"], "ranks": [1, 2]}\n')
    line = fails(capsys, judge.main, "judge.py", ["--eval", "--input", groups, *argv])
    assert "groups.jsonl:1: key 'prompt' must be a string, got int 7" in line
    assert snapshot(finished) == before


def test_kill_between_judge_summary_and_pairs_loses_neither(model_dir, finished, tmp_path, monkeypatch):
    """The summary is written first: killed right after it, the step is not done (no pairs.jsonl)
    and the rerun writes both; never pairs without their summary."""
    import srlm.pairs

    d = tmp_path / "run"
    d.mkdir()
    for name in ("candidates.jsonl", "judgements.jsonl"):
        (d / name).write_bytes((finished / name).read_bytes())
    argv = ["--model", model_dir, "--input", d / "candidates.jsonl", "--k", "1", "--max-new-tokens", "4",
            "--template", "compact", "--score-pattern", "(?P<score>[0-5])", "--device", "cpu"]
    real = srlm.pairs.write_jsonl

    def killed_at_pairs(path, rows):
        if Path(path).name == "pairs.jsonl":
            raise KeyboardInterrupt
        return real(path, rows)

    monkeypatch.setattr(srlm.pairs, "write_jsonl", killed_at_pairs)
    with pytest.raises(KeyboardInterrupt):
        judge.main([str(a) for a in argv])
    assert (d / "judge_summary.json").is_file() and not (d / "pairs.jsonl").exists()
    monkeypatch.setattr(srlm.pairs, "write_jsonl", real)
    judge.main([str(a) for a in argv])
    assert (d / "pairs.jsonl").read_bytes() == (finished / "pairs.jsonl").read_bytes()
    assert (d / "judge_summary.json").read_bytes() == (finished / "judge_summary.json").read_bytes()


def test_kill_between_prompts_summary_and_prompts_loses_neither(model_dir, tmp_path, monkeypatch):
    import srlm.prompts
    from srlm.loading import load_for_inference
    from srlm.prompts import SelfInstructSettings, write_prompts

    pool = tmp_path / "seed.jsonl"
    write_jsonl(pool, [{"prompt": f"Tell me about topic number {i} in a few words."} for i in range(8)])
    model, tok = load_for_inference(model_dir)
    s = SelfInstructSettings(num_prompts=2, max_new_tokens=8, batch_size=4, max_rounds=2, n_shot=3)
    real = srlm.prompts.write_jsonl
    monkeypatch.setattr(srlm.prompts, "write_jsonl", lambda path, rows: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        write_prompts(model, tok, pool, tmp_path / "prompts.jsonl", s, summary=tmp_path / "prompts_summary.json")
    assert not (tmp_path / "prompts.jsonl").exists()
    first = json.loads((tmp_path / "prompts_summary.json").read_text())
    monkeypatch.setattr(srlm.prompts, "write_jsonl", real)
    again = write_prompts(model, tok, pool, tmp_path / "prompts.jsonl", s, summary=tmp_path / "prompts_summary.json")
    assert again == first == json.loads((tmp_path / "prompts_summary.json").read_text())  # logged rounds reused
    assert len(read_jsonl(tmp_path / "prompts.jsonl")) == again["written"]


# ---- the loop ----
def loop_args(run_dir, *extra):
    return ["--run-dir", run_dir, "--skip-eval", "--iterations", "1", "--device", "cpu", *extra]


def test_loop_checks_inputs_before_writing_anything(tmp_path, capsys):
    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")
    run_dir = tmp_path / "run"
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--seed-prompts", tmp_path / "missing.jsonl"))
    assert "missing.jsonl: file not found" in line
    ift = tmp_path / "ift.jsonl"
    ift.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"}\n')
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--ift", ift))
    assert "ift.jsonl:2: missing required field(s) ['response']" in line
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--base-model", tmp_path / "nope"))
    assert "nope: --base-model directory not found" in line
    more = tmp_path / "more.jsonl"
    more.write_text('{"prompt": "What is 2 + 2?"}\n{"text": "no prompt"}\n')
    args = [a for a in loop_args(run_dir, "--eval-prompts-more", more) if a != "--skip-eval"]
    line = fails(capsys, loop.main, "python -m srlm.loop", args)
    assert "more.jsonl:2: missing required field(s) ['prompt']" in line
    assert not run_dir.exists()


def test_loop_reads_m0s_weights_before_writing_anything(tmp_path, capsys):
    """A NaN inside M0's weights is found before the run directory exists (not when SFT loads M0)."""
    import shutil

    from safetensors.torch import load_file, save_file

    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")
    bad = tmp_path / "m0"
    shutil.copytree(DATA / "m0", bad)
    state = load_file(bad / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    run_dir = tmp_path / "run"
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--base-model", bad, "--settings", "tiny"))
    assert "m0/model.safetensors: " in line and "layers.0.feed_forward.w2.weight" in line and "non-finite" in line
    assert not run_dir.exists()


def test_loop_refuses_answer_lengths_that_leave_no_room_for_a_prompt(tmp_path, capsys):
    """The paper's settings (512-token answers) on a model with a 512-token context would skip every
    prompt as too long and report empty answers; it is refused before anything is written."""
    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")
    run_dir = tmp_path / "run"
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--settings", "paper"))
    assert "--max-new-tokens 512 leaves no room for a prompt in M0's context" in line
    assert "m0/config.json: 512 tokens" in line and "--settings tiny" in line
    assert not run_dir.exists()


def test_loop_chat_format_is_checked_up_front_and_reaches_training(tmp_path, capsys, monkeypatch):
    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")
    run_dir = tmp_path / "run"
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--chat", "chatml"))
    assert "tokenizer.model: the tokenizer has no piece '<|im_end|>'" in line  # M0's SentencePiece has no ChatML
    assert not run_dir.exists()

    seen = []

    class Stop(Exception):
        pass

    def stop(cfg):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(loop, "train", stop)
    with pytest.raises(Stop):
        loop.main([str(a) for a in loop_args(run_dir, "--chat", "llama2")])
    assert seen[0].stage == "sft" and seen[0].chat == "llama2"


def test_loop_refuses_a_run_directory_with_other_settings(tmp_path, capsys, monkeypatch):
    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(loop, "train", stop)  # record the settings, then stop before SFT
    run_dir = tmp_path / "run"
    with pytest.raises(Stop):
        loop.main([str(a) for a in loop_args(run_dir)])
    recorded = (run_dir / "settings.json").read_bytes()
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--seed", "5", "--dpo-lr", "3e-4"))
    assert "this run directory was made with other settings (dpo_lr: recorded 3e-05, now 0.0003; " \
           "seed: recorded 0, now 5)" in line
    assert (run_dir / "settings.json").read_bytes() == recorded
    with pytest.raises(Stop):  # where it runs and how far it goes may change
        loop.main([str(a) for a in loop_args(run_dir)] + ["--iterations", "3"])


def test_loop_refuses_bad_settings_and_a_run_dir_that_is_a_file(tmp_path, capsys):
    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")
    run_dir = tmp_path / "run"
    for extra, message in [(["--n-candidates", "0"], "--n-candidates must be >= 1, got 0"),
                           (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
                           (["--judge-temperature", "-1"], "--judge-temperature must be >= 0, got -1.0"),
                           (["--similarity-threshold", "0"], "--similarity-threshold must be in (0, 1], got 0.0")]:
        assert message in fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, *extra))
    assert not run_dir.exists()
    taken = tmp_path / "taken"
    taken.write_text("mine")
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(taken))
    assert "taken: --run-dir must be a folder (or not exist yet); this is a file" in line
    assert taken.read_text() == "mine"


# ---- sampling settings and output paths: refused before a model is loaded ----
def test_generate_and_judge_refuse_sampling_settings_before_loading(tmp_path, capsys):
    nowhere = tmp_path / "no_model"  # never reached: the settings are checked first
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, PROMPTS)
    line = fails(capsys, generate.main, "generate.py", responses(nowhere, prompts, tmp_path / "c.jsonl",
                                                                 "--temperature", "-1"))
    assert "temperature must be >= 0, got -1.0" in line
    line = fails(capsys, generate.main, "generate.py", responses(nowhere, prompts, tmp_path / "c.jsonl", "--top-p", "0"))
    assert "top_p must be in (0, 1], got 0.0" in line
    line = fails(capsys, generate.main, "generate.py", responses(nowhere, prompts, tmp_path))
    assert "--output must be a file (JSONL), this is a folder" in line
    for extra, message in [(["--top-p", "2"], "top_p must be in (0, 1], got 2.0"),
                           (["--k", "0"], "--k must be >= 1, got 0"),
                           (["--chunk-size", "0"], "--chunk-size must be >= 1, got 0")]:
        assert message in fails(capsys, judge.main, "judge.py", ["--model", nowhere, "--input", prompts, *extra])
    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "a", "prompt": "q", "candidates": ["x", "y"]}])
    line = fails(capsys, judge.main, "judge.py", ["--model", nowhere, "--input", candidates, "--pairs", tmp_path])
    assert "--pairs must be a file, this is a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates.jsonl", "prompts.jsonl"]


# ---- train.py ----
def test_train_model_config_and_tokenizer_problems_are_one_line(tmp_path, capsys):
    import train

    data = tmp_path / "text.jsonl"
    write_jsonl(data, [{"text": "one two three"}])
    config = tmp_path / "m.json"
    out = tmp_path / "out"

    def argv(*extra):
        return ["--stage", "pretrain", "--model-config", config, "--data", data, "--out", out, "--device", "cpu",
                "--no-progress", *extra]

    for content, message in [('{"dim": "128"}', "m.json: key 'dim' must be a positive integer, got \"128\""),
                             ("[64, 2]", "m.json: expected a JSON object of ModelArgs fields, got list"),
                             ('{"dim": 30, "n_heads": 4}', "m.json: dim=30 is not divisible by n_heads=4")]:
        config.write_text(content)
        line = fails(capsys, train.main, "train.py", argv("--tokenizer", DATA / "tokenizer.model"))
        assert message in line, line
    line = fails(capsys, train.main, "train.py", argv("--tokenizer", tmp_path / "missing.model"))
    assert "missing.model: tokenizer file not found" in line
    line = fails(capsys, train.main, "train.py", argv("--tokenizer", DATA / "tokenizer.model", "--group-by-length", "-1"))
    assert line == "train.py: error: --group-by-length must be >= 0, got -1", line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "text.jsonl"]  # no out/, no out.train/


# ---- python -m srlm.oasst ----
def test_oasst_checks_trees_and_judge_model_before_writing(tmp_path, capsys):
    from srlm import oasst

    trees = oasst_trees(tmp_path / "all.jsonl", 8)
    out = tmp_path / "out"
    line = fails(capsys, oasst.main, "python -m srlm.oasst",
                 ["--trees", trees, "--out-dir", out, "--judge-model", tmp_path / "nope"])
    assert "nope: model directory not found" in line
    line = fails(capsys, oasst.main, "python -m srlm.oasst",
                 ["--trees", trees, "--out-dir", out, "--judge-model", tmp_path, "--template", tmp_path / "t.txt"])
    assert "t.txt: judge template file not found" in line
    bad = tmp_path / "trees.jsonl"
    bad.write_bytes(trees.read_bytes().splitlines(keepends=True)[0] + b'{"message_tree_id": "x", "prompt": 7}\n')
    line = fails(capsys, oasst.main, "python -m srlm.oasst", ["--trees", bad, "--out-dir", out])
    assert "trees.jsonl:2: expected a tree object with a 'prompt' message" in line
    line = fails(capsys, oasst.main, "python -m srlm.oasst", ["--trees", trees, "--out-dir", out, "--eval-fraction", "2"])
    assert "--eval-fraction must be in [0, 1], got 2.0" in line
    assert not out.exists()


# ---- python -m srlm.evaluate ----
def test_evaluate_checks_its_files_before_loading_the_model(model_dir, tmp_path, capsys):
    from srlm import evaluate

    groups = tmp_path / "groups.jsonl"
    groups.write_text('{"prompt": "q", "replies": ["a", "b"], "ranks": [1]}\n')
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, PROMPTS)
    out = tmp_path / "eval"
    argv = ["--model", tmp_path / "no_model", "--name", "m", "--out-dir", out, "--eval-prompts", prompts]
    line = fails(capsys, evaluate.main, "python -m srlm.evaluate", argv + ["--eval-groups", groups])
    assert "groups.jsonl:1: key 'ranks' has 1 ranks for 2 replies" in line
    prompts.write_text('{"prompt": "ok"}\n{"prompt": ["not", "text"]}\n')
    line = fails(capsys, evaluate.main, "python -m srlm.evaluate", argv + ["--eval-groups", DATA / "eval_groups.jsonl"])
    assert "prompts.jsonl:2: key 'prompt' must be a string, got list" in line
    write_jsonl(prompts, PROMPTS)
    line = fails(capsys, evaluate.main, "python -m srlm.evaluate", argv + ["--eval-groups", DATA / "eval_groups.jsonl"])
    assert "no_model: model directory not found" in line
    assert not out.exists()


# ---- python -m srlm.report, python -m srlm.smollm2, python -m data.build ----
def test_report_names_the_results_file_at_fault(tmp_path, capsys):
    from srlm import report

    for name, content, message in [("torn", '{"m1": {', "results.json: malformed JSON"),
                                   ("listed", "[1, 2]", "results.json: expected a JSON object of results per model"),
                                   ("flat", '{"m1": 0.5}', "results.json: key 'm1' must be an object of results, got float")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(content)
        assert message in fails(capsys, report.main, "python -m srlm.report", [tmp_path / name])


def test_smollm2_and_data_build_never_replace_what_is_not_theirs(tmp_path, capsys):
    from data import build
    from srlm import smollm2

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep")
    line = fails(capsys, smollm2.main, "python -m srlm.smollm2", ["--out", mine])
    assert "notes: --out exists and is not a checkpoint folder" in line
    assert (mine / "todo.txt").read_text() == "keep"
    afile = tmp_path / "file"
    afile.write_text("keep")
    line = fails(capsys, build.main, "python -m data.build", ["--out", afile, "--skip-model"])
    assert "file: --out must be a folder (or not exist yet); this is a file" in line
    assert afile.read_text() == "keep"


def test_oasst_never_replaces_its_outputs_with_fewer_rows(tmp_path, capsys):
    from srlm import oasst

    trees = oasst_trees(tmp_path / "all.jsonl", 40)
    out = tmp_path / "out"
    oasst.main(["--trees", str(trees), "--out-dir", str(out)])
    before = snapshot(out)
    few = oasst_trees(tmp_path / "few.jsonl", 4)
    line = fails(capsys, oasst.main, "python -m srlm.oasst", ["--trees", few, "--out-dir", out])
    assert re.search(r"out/\w+\.jsonl: would replace its \d+ rows with \d+", line), line
    assert snapshot(out) == before
    oasst.main(["--trees", str(few), "--out-dir", str(out), "--overwrite"])
    assert len(read_jsonl(out / "ift.jsonl")) < len(before["ift.jsonl"].splitlines())


def test_loop_checks_a_prompt_model_before_writing(tmp_path, capsys):
    if not (DATA / "m0" / "config.json").is_file():
        pytest.skip("data/ has not been built")
    writer = tmp_path / "writer"
    writer.mkdir()
    (writer / "config.json").write_text('{"hidden_size": "64"}')
    run_dir = tmp_path / "run"
    line = fails(capsys, loop.main, "python -m srlm.loop", loop_args(run_dir, "--prompt-model", writer))
    assert "writer/config.json: key 'hidden_size' must be a positive integer, got '64'" in line, line
    assert not run_dir.exists()


def test_non_utf8_files_name_the_file(tmp_path, capsys):
    """Trees, a judge template, a --model-config file: Latin-1 bytes are named by file (and line)."""
    import train
    from srlm import oasst

    trees = tmp_path / "trees.jsonl"
    trees.write_bytes(b'{"message_tree_id": "t", "prompt": {"message_id": "m", "role": "prompter", '
                      b'"text": "caf\xe9"}}\n')
    line = fails(capsys, oasst.main, "python -m srlm.oasst", ["--trees", trees, "--out-dir", tmp_path / "o"])
    assert "trees.jsonl:1: not UTF-8 text" in line
    template = tmp_path / "t.txt"
    template.write_bytes(b"caf\xe9 {prompt} {response}")
    line = fails(capsys, judge.main, "judge.py", ["--model", tmp_path / "m", "--input", tmp_path / "c.jsonl",
                                                  "--template", template])
    assert "t.txt: not UTF-8 text (invalid continuation byte at byte 4)" in line
    config = tmp_path / "m.json"
    config.write_bytes(b'{"dim": 64, "attn_impl": "caf\xe9"}')
    data = tmp_path / "text.jsonl"
    write_jsonl(data, [{"text": "one two"}])
    line = fails(capsys, train.main, "train.py", ["--stage", "pretrain", "--model-config", config, "--tokenizer",
                                                  DATA / "tokenizer.model", "--data", data, "--out", tmp_path / "o"])
    assert "m.json: not UTF-8 text" in line
    assert not (tmp_path / "o").exists()
