"""Tests for srlm/candidates.py, called as the loop calls it: the rows' resume key (input_hash), N
candidates per prompt independent of how the work is split, and what a rerun reuses.

The command line (generate.py --task responses: flags, torchrun, bad input) is tests/test_generate.py.

    python -m pytest -q tests/test_candidates.py
"""
import pytest
import torch

from conftest import small_tokenizer
from srlm.candidates import CandidateSettings, generate_candidates, read_prompt_rows, row_hash, write_candidates
from srlm.io import DataError, read_jsonl, write_jsonl
from srlm.loading import model_id
from srlm.model import Llama, ModelArgs
from srlm.tokenizer import Tokenizer

PROMPTS = [{"id": f"p{i}", "prompt": f"Write a sentence about the number {i}."} for i in range(5)]
S = CandidateSettings(n=2, max_new_tokens=4, batch_size=4, temperature=0.7, seed=3)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(small_tokenizer())


def micro(seed=0) -> Llama:
    torch.manual_seed(seed)
    return Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=64)).eval()


def test_row_hash_covers_what_shapes_the_samples_and_nothing_else():
    base = row_hash("Q?", S, "m/llama2")
    assert base == row_hash("Q?", CandidateSettings(**{**vars(S), "batch_size": 16, "compile": True}), "m/llama2")
    for prompt, settings, model in [("Q!", S, "m/llama2"), ("Q?", S, "m/chatml"), ("Q?", S, "other/llama2")]:
        assert row_hash(prompt, settings, model) != base
    for change in (dict(n=3), dict(temperature=0.0), dict(top_p=0.5), dict(top_k=5), dict(max_new_tokens=8),
                   dict(seed=4)):
        assert row_hash("Q?", CandidateSettings(**{**vars(S), **change}), "m/llama2") != base, change


def test_ranks_together_write_what_one_process_writes(tok):
    """Batches are cut by input position and seeded by it, so two ranks (rank r takes batches r, r + 2)
    together sample exactly the single-process rows, even at temperature 0.7."""
    model = micro()
    one, _ = generate_candidates(model, tok, PROMPTS, 2, 4, seed=3, batch_size=4, temperature=0.7, progress=False)
    parts = [generate_candidates(model, tok, PROMPTS, 2, 4, seed=3, batch_size=4, temperature=0.7, rank=r,
                                 world_size=2, progress=False)[0] for r in (0, 1)]
    assert sorted(parts[0] + parts[1], key=lambda r: r["id"]) == one
    assert [r["id"] for r in parts[0]] == ["p0", "p1", "p4"] and [r["id"] for r in parts[1]] == ["p2", "p3"]
    assert all(len(r["candidates"]) == 2 for r in one)


def test_done_ids_skip_finished_prompts_but_resample_their_batch(tok):
    """A batch with one unfinished prompt is sampled again in full (same seed), and only the
    unfinished prompt is returned: its candidates are the uninterrupted run's."""
    model = micro()
    full, _ = generate_candidates(model, tok, PROMPTS, 2, 4, seed=3, batch_size=4, temperature=0.7, progress=False)
    batches = []
    rest, _ = generate_candidates(model, tok, PROMPTS, 2, 4, seed=3, batch_size=4, temperature=0.7,
                                  done_ids={"p0", "p1", "p2"}, on_done=batches.append, progress=False)
    assert rest == [full[3], full[4]] and batches == [[full[3]], [full[4]]]


def test_write_candidates_reuses_only_rows_whose_inputs_match(tok, tmp_path):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "candidates.jsonl"
    write_jsonl(inp, PROMPTS)
    model = micro()
    first = write_candidates(model, tok, inp, out, S)
    rows = read_jsonl(out)
    assert first["generated_now"] == 5 and [r["id"] for r in rows] == [p["id"] for p in PROMPTS]
    assert all(r["input_hash"] == row_hash(p["prompt"], S, model_id(model, tok)) for r, p in zip(rows, PROMPTS))
    again = write_candidates(model, tok, inp, out, S)
    assert (again["generated_now"], again["resumed"], again["redone_stale"]) == (0, 5, 0) and read_jsonl(out) == rows
    other = write_candidates(micro(seed=1), tok, inp, out, S)   # another model: nothing reused
    assert (other["generated_now"], other["resumed"], other["redone_stale"]) == (5, 0, 5)


def test_write_candidates_never_shrinks_an_output(tok, tmp_path):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "candidates.jsonl"
    write_jsonl(inp, PROMPTS)
    write_candidates(micro(), tok, inp, out, S)
    before = out.read_bytes()
    write_jsonl(inp, PROMPTS[:2])
    with pytest.raises(DataError, match=r"candidates\.jsonl: would replace its 5 prompts' candidates with 2"):
        write_candidates(micro(), tok, inp, out, S)
    assert out.read_bytes() == before
    assert write_candidates(micro(), tok, inp, out, S, overwrite=True)["written"] == 2


def test_read_prompt_rows_checks_ids_and_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "ok"}\n{"id": 1, "prompt": "again"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: key 'id': duplicate value 1 \(first on line 1\)"):
        read_prompt_rows(path)
    path.write_text("")
    with pytest.raises(DataError, match=r"p\.jsonl: no prompts in this file"):
        read_prompt_rows(path)
