"""Tests for generate.py on a tiny random model with a real (small) SentencePiece vocabulary:
file formats, input order, resuming from the partial log, bad input, and torchrun sharding.

    python -m pytest -q tests/test_generate.py
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import generate as gen
from conftest import ROOT, small_tokenizer
from srlm.io import DataError, append_jsonl, read_jsonl, write_jsonl
from srlm.checkpoint import load_model, save_model
from srlm.model import Llama, ModelArgs

PROMPTS = [
    {"id": "a", "prompt": "What is the capital of France?", "source": "test"},
    {"id": "b", "prompt": "Write a short poem about the sea.", "source": "test"},
    {"id": "c", "prompt": "How do I boil an egg?", "source": "test"},
    {"id": "d", "prompt": "Name three colours.", "source": "test"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok_path = small_tokenizer()
    torch.manual_seed(0)
    model = Llama(ModelArgs.preset("tiny", vocab_size=1000))
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(model, path, tokenizer_path=tok_path)
    return path


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, PROMPTS)
    return path


def run_responses(model_dir, inp, out, *extra):
    return gen.main(["--model", str(model_dir), "--task", "responses", "--input", str(inp), "--output", str(out),
                     "--n", "2", "--max-new-tokens", "6", "--batch-size", "4", *extra])


def test_responses_format_and_order(model_dir, prompts_file, tmp_path):
    out = tmp_path / "candidates.jsonl"
    summary = run_responses(model_dir, prompts_file, out)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PROMPTS]
    assert all(len(r["candidates"]) == 2 and all(isinstance(c, str) for c in r["candidates"]) for r in rows)
    assert summary["written"] == 4 and summary["skipped_too_long"] == 0
    assert not list(tmp_path.glob("candidates.jsonl.partial*"))  # the log is removed at the end
    # Seeded: the same run again (with --overwrite) writes the same file.
    first = out.read_text()
    run_responses(model_dir, prompts_file, out, "--overwrite")
    assert out.read_text() == first


def test_greedy_candidates_are_the_sampler_output(model_dir, prompts_file, tmp_path):
    """At temperature 0 every candidate is the greedy continuation of the chat-formatted prompt."""
    from srlm.sampling import generate
    from srlm.tokenizer import Tokenizer

    out = tmp_path / "candidates.jsonl"
    run_responses(model_dir, prompts_file, out, "--temperature", "0")
    model = load_model(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    for row, p in zip(read_jsonl(out), PROMPTS):
        ids = generate(model, [tok.encode_prompt(p["prompt"])], 6, eos_id=tok.eos_id)[0]
        assert row["candidates"] == [tok.decode(ids).strip()] * 2


def test_resume_skips_finished_prompts(model_dir, prompts_file, tmp_path):
    """A partial log from a killed run holds prompt "b" (with made-up candidates) and a torn last line.
    The rerun must keep "b" as logged, generate the others, and write all four in input order."""
    out = tmp_path / "candidates.jsonl"
    log = tmp_path / "candidates.jsonl.partial"
    from srlm.candidates import CandidateSettings, row_hash
    from srlm.loading import load_for_inference, model_id

    key = row_hash(PROMPTS[1]["prompt"], CandidateSettings(n=2, max_new_tokens=6),  # run_responses' settings
                   model_id(*load_for_inference(model_dir)))
    append_jsonl(log, [{"id": "b", "prompt": PROMPTS[1]["prompt"], "candidates": ["logged 1", "logged 2"],
                        "input_hash": key}])
    with open(log, "a") as f:
        f.write('{"id": "c", "prompt": "How do')  # the kill came mid-line
    summary = run_responses(model_dir, prompts_file, out)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[1]["candidates"] == ["logged 1", "logged 2"]
    assert summary["resumed"] == 1 and summary["generated_now"] == 3
    # A finished output counts as done: rerunning generates nothing and leaves it as it is.
    text = out.read_text()
    assert run_responses(model_dir, prompts_file, out)["generated_now"] == 0
    assert out.read_text() == text


def test_prompt_longer_than_context_is_skipped_and_counted(model_dir, tmp_path):
    rows = PROMPTS[:2] + [{"id": "long", "prompt": "word " * 400, "source": "test"}]
    inp, out = tmp_path / "p.jsonl", tmp_path / "c.jsonl"
    write_jsonl(inp, rows)
    summary = run_responses(model_dir, inp, out)
    assert summary["skipped_too_long"] == 1 and summary["skipped_ids"] == ["long"]
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b"]


def test_bad_input_names_file_and_line(model_dir, tmp_path):
    inp = tmp_path / "prompts.jsonl"
    inp.write_text(json.dumps(PROMPTS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"prompts.jsonl:2"):
        run_responses(model_dir, inp, tmp_path / "c.jsonl")
    inp.write_text(json.dumps(PROMPTS[0]) + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(DataError, match=r"prompts.jsonl:2: missing required field\(s\) \['prompt'\]"):
        run_responses(model_dir, inp, tmp_path / "c.jsonl")
    inp.write_text(json.dumps(PROMPTS[0]) + "\n" + json.dumps(PROMPTS[0]) + "\n")
    with pytest.raises(DataError, match=r"prompts.jsonl:2: key 'id': duplicate value 'a' \(first on line 1\)"):
        run_responses(model_dir, inp, tmp_path / "c.jsonl")


def test_model_dir_without_tokenizer(model_dir, prompts_file, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        run_responses(bare, prompts_file, tmp_path / "c.jsonl")
    # --tokenizer points at one elsewhere
    run_responses(bare, prompts_file, tmp_path / "c.jsonl", "--tokenizer", str(model_dir / "tokenizer.model"))


# ----------------------------------------------------------------------------- self-instruction

SEED_POOL = [{"prompt": p} for p in [
    "What is the capital of France?", "Write a short poem about the sea.", "How do I boil an egg?",
    "Name three colours.", "Explain how a rainbow forms.", "Give me a recipe for pancakes.",
    "What does a compiler do?", "Suggest a name for a pet turtle.", "How far away is the moon?",
    "Translate 'good morning' into Spanish."]]


def run_prompts(model_dir, seed_pool, out, *extra):
    return gen.main(["--model", str(model_dir), "--task", "prompts", "--seed-pool", str(seed_pool),
                     "--output", str(out), "--num-prompts", "3", "--max-new-tokens", "12", "--batch-size", "4",
                     "--min-words", "1", "--n-shot", "4", *extra])


def test_self_instruct_end_to_end(model_dir, tmp_path):
    seed_pool, out = tmp_path / "ift.jsonl", tmp_path / "new_prompts.jsonl"
    write_jsonl(seed_pool, SEED_POOL)
    summary = run_prompts(model_dir, seed_pool, out)
    rows = read_jsonl(out)
    assert 1 <= len(rows) <= 3 and summary["written"] == len(rows)
    assert all(set(r) >= {"id", "prompt", "source"} and r["source"] == "self-instruct" for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    seeds = {p["prompt"] for p in SEED_POOL}
    assert all(r["prompt"] not in seeds and r["prompt"].strip() == r["prompt"] and "\n\n" not in r["prompt"]
               for r in rows)
    assert not list(tmp_path.glob("new_prompts.jsonl.partial*"))


def test_self_instruct_resumes_from_logged_rounds(model_dir, tmp_path):
    """A logged round already holds enough prompts: the rerun generates nothing new and writes them."""
    seed_pool, out = tmp_path / "ift.jsonl", tmp_path / "new_prompts.jsonl"
    write_jsonl(seed_pool, SEED_POOL)
    logged = [{"id": f"x{i}", "prompt": text, "source": "self-instruct"}
              for i, text in enumerate(["Why do cats purr?", "Plan a weekend in Rome.", "What is entropy?"])]
    from srlm.loading import load_for_inference, model_id
    from srlm.prompts import SelfInstructSettings, round_key

    s = SelfInstructSettings(num_prompts=3, max_new_tokens=12, batch_size=4, min_words=1, n_shot=4)  # run_prompts'
    key = round_key([r["prompt"] for r in SEED_POOL], [], model_id(*load_for_inference(model_dir)), s)
    append_jsonl(Path(str(out) + ".partial"), [{"round": 0, "accepted": logged, "rejected": {}, "attempts": 4,
                                                "input_hash": key}])
    summary = run_prompts(model_dir, seed_pool, out)
    assert read_jsonl(out) == logged
    assert summary["rounds"] == 1


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_two_ranks_match_one_process(model_dir, prompts_file, tmp_path):
    """Two CPU ranks (gloo) take alternate batches; rank 0 merges them in input order. Batches and
    their seeds are fixed by input position, so even sampled (temperature 0.7) the file equals the
    single-process one."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    single, multi = tmp_path / "single.jsonl", tmp_path / "multi.jsonl"
    run_responses(model_dir, prompts_file, single, "--temperature", "0.7", "--device", "cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [torchrun, "--nproc_per_node", "2", "--standalone", str(ROOT / "generate.py"),
           "--model", str(model_dir), "--task", "responses", "--input", str(prompts_file), "--output", str(multi),
           "--num-candidates", "2", "--max-new-tokens", "6", "--batch-size", "4", "--temperature", "0.7",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert multi.read_text() == single.read_text()


def test_resumed_sampling_equals_uninterrupted(model_dir, prompts_file, tmp_path):
    """Kill after the first batch (prompts a, b: the log holds them), rerun: the sampled file is the
    same as an uninterrupted run's, since each batch and its seed depend only on input positions."""
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    run_responses(model_dir, prompts_file, full, "--temperature", "0.7", "--device", "cpu")
    first_batch = read_jsonl(full)[:2]  # --batch-size 4 with --n 2: two prompts per batch
    append_jsonl(Path(str(resumed) + ".partial"), first_batch)
    summary = run_responses(model_dir, prompts_file, resumed, "--temperature", "0.7", "--device", "cpu")
    assert summary["resumed"] == 2 and summary["generated_now"] == 2
    assert resumed.read_text() == full.read_text()
