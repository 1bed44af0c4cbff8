"""Tests for srlm/prompts.py, called as the loop calls it: a round's resume key (input_hash), rounds
that depend only on (seed, round), the filters every kept prompt passed, and what a rerun reuses.

The text pieces (few-shot prompt, parser, ROUGE-L filter) are tests/test_self_instruct.py; the
command line (generate.py --task prompts) is tests/test_generate.py.

    python -m pytest -q tests/test_prompts.py
"""
import json

import pytest
import torch

from conftest import small_tokenizer
from srlm.io import DataError, read_jsonl, write_jsonl
from srlm.model import Llama, ModelArgs
from srlm.prompts import SelfInstructSettings, read_prompt_pool, round_key, self_instruct_round, write_prompts
from srlm.self_instruct import DuplicateFilter, words
from srlm.tokenizer import Tokenizer

SEEDS = [f"Tell me one thing about the number {i} in a few words." for i in range(8)]
S = SelfInstructSettings(num_prompts=3, n_shot=3, n_generated_shots=0, max_new_tokens=10, batch_size=6,
                         min_words=1, max_words=40, similarity_threshold=0.7, max_rounds=4, temperature=1.0)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(small_tokenizer())


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over word tokens, from a full LCS table (written here, not srlm's row-by-row one)."""
    x, y = words(a), words(b)
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return 2 * table[-1][-1] / (len(x) + len(y)) if x or y else 0.0


def micro(seed=0) -> Llama:
    torch.manual_seed(seed)
    return Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=256)).eval()


def test_round_key_covers_pools_model_and_settings_but_not_the_count():
    base = round_key(SEEDS, [], "m/llama2", S)
    assert base == round_key(SEEDS, [], "m/llama2", SelfInstructSettings(**{**vars(S), "num_prompts": 50,
                                                                              "compile": True}))
    assert round_key(SEEDS[:-1], [], "m/llama2", S) != base
    assert round_key(SEEDS, ["an earlier prompt"], "m/llama2", S) != base
    assert round_key(SEEDS, [], "m2/llama2", S) != base
    for change in (dict(seed=1), dict(temperature=0.6), dict(n_shot=4), dict(similarity_threshold=0.9)):
        assert round_key(SEEDS, [], "m/llama2", SelfInstructSettings(**{**vars(S), **change})) != base, change


def test_a_round_depends_only_on_seed_and_round(tok):
    model = micro()
    one = self_instruct_round(model, tok, 2, SEEDS, [], DuplicateFilter(SEEDS, 0.7), S)
    two = self_instruct_round(model, tok, 2, SEEDS, [], DuplicateFilter(SEEDS, 0.7), S)
    other = self_instruct_round(model, tok, 3, SEEDS, [], DuplicateFilter(SEEDS, 0.7), S)
    assert one == two and one["attempts"] == 6
    assert len(one["accepted"]) + sum(one["rejected"].values()) == 6  # every sample kept or rejected by reason
    assert [r["prompt"] for r in other["accepted"]] != [r["prompt"] for r in one["accepted"]]
    assert all(r["id"].startswith("selfinstruct-s0-r2-") for r in one["accepted"])


def test_write_prompts_keeps_only_new_distinct_prompts(tok, tmp_path):
    pool, out, summary = tmp_path / "seed.jsonl", tmp_path / "prompts.jsonl", tmp_path / "summary.json"
    write_jsonl(pool, [{"prompt": p} for p in SEEDS])
    stats = write_prompts(micro(), tok, pool, out, S, model_name="m0", summary=summary)
    rows = read_jsonl(out)
    assert 1 <= len(rows) <= 3 and stats["written"] == len(rows) and json.loads(summary.read_text()) == stats
    assert stats["attempts"] == 6 * stats["rounds"]
    assert all(r["source"] == "self-instruct" and r["model"] == "m0" for r in rows)
    texts = [r["prompt"] for r in rows]
    for i, text in enumerate(texts):  # independent check of the duplicate filter's promise
        assert all(rouge_l(text, other) < S.similarity_threshold for other in SEEDS + texts[:i]), text
    assert not list(tmp_path.glob("prompts.jsonl.partial*"))
    again = write_prompts(micro(), tok, pool, out, S)
    assert again["note"] == "output exists; nothing to do" and read_jsonl(out) == rows


def test_rounds_logged_by_another_model_are_done_again(tok, tmp_path):
    pool, out = tmp_path / "seed.jsonl", tmp_path / "prompts.jsonl"
    write_jsonl(pool, [{"prompt": p} for p in SEEDS])
    stale = {"round": 0, "accepted": [{"id": "x", "prompt": "A prompt from another model?"}], "rejected": {},
             "attempts": 6, "input_hash": "not-this-one"}
    write_jsonl(tmp_path / "prompts.jsonl.partial", [stale])
    stats = write_prompts(micro(), tok, pool, out, S)
    assert stats["stale_rounds_redone"] == 1
    assert "A prompt from another model?" not in [r["prompt"] for r in read_jsonl(out)]


def test_read_prompt_pool_checks_its_rows(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"pool\.jsonl:2: missing required field\(s\) \['prompt'\]"):
        read_prompt_pool(path)
    path.write_text("\n")
    with pytest.raises(DataError, match=r"pool\.jsonl: no prompts in this file"):
        read_prompt_pool(path)
