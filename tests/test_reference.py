"""Tests for srlm/reference.py: DPO's reference log-probs, against a plain per-pair log-softmax sum,
and their resumable log (reused while it matches, finished after a kill, recomputed when stale).

    python -m pytest -q tests/test_reference.py
"""
import contextlib
import json

import pytest
import torch

from conftest import small_tokenizer
from srlm.data import tokenize
from srlm.io import read_jsonl
from srlm.logprobs import LogprobModel
from srlm.model import Llama, ModelArgs
from srlm.reference import pair_logps, reference_logps
from srlm.tokenizer import Tokenizer
from srlm.train_config import TrainingError

ROWS = [{"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": f"I think it is {a + b + 1}."}
        for a, b in [(1, 2), (3, 4), (5, 6), (2, 7), (8, 1)]]
META = {"start_model": "m0", "data": "abc", "dtype": "torch.float32"}


@pytest.fixture
def setup():
    tok = Tokenizer(small_tokenizer())
    torch.manual_seed(0)
    model = Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=64,
                            dropout=0.5))
    examples, _ = tokenize(ROWS, "dpo", tok, 64)
    return LogprobModel(model, impl="torch"), examples, tok


def by_hand(model: Llama, tokens: list[int], mask: list[int]) -> float:
    """sum over answer positions t (mask[t] = 1) of log softmax(logits[t - 1])[tokens[t]], one
    unpadded sequence at a time, the model in eval mode (no dropout)."""
    model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([tokens]))[0].double(), dim=-1)  # (T, vocab)
    return sum(logp[t - 1, tokens[t]].item() for t in range(1, len(tokens)) if mask[t])


def run(wrapped, examples, path, tok, meta=META, **kw):
    reference_logps(wrapped, examples, path, meta, 2, tok.pad_id, torch.device("cpu"), contextlib.nullcontext, **kw)


def counting(wrapped):
    """The pairs each forward pass of `wrapped` saw (2 rows per pair: chosen and rejected)."""
    seen = []
    real = wrapped.forward
    wrapped.forward = lambda tokens, mask: seen.append(len(tokens) // 2) or real(tokens, mask)
    return seen


def test_reference_logps_equal_the_plain_sum_in_eval_mode(setup, tmp_path):
    wrapped, examples, tok = setup
    wrapped.train()  # dropout 0.5 on: the reference must be computed without it
    run(wrapped, examples, tmp_path / "ref.jsonl", tok)
    assert wrapped.training  # the caller's mode is restored
    for e in examples:
        assert e["ref_chosen_logps"] == pytest.approx(by_hand(wrapped.model, e["chosen_tokens"], e["chosen_mask"]),
                                                      abs=1e-4)
        assert e["ref_rejected_logps"] == pytest.approx(
            by_hand(wrapped.model, e["rejected_tokens"], e["rejected_mask"]), abs=1e-4)
    lines = read_jsonl(tmp_path / "ref.jsonl")
    assert lines[0] == {"meta": META} and [r["index"] for r in lines[1:]] == [0, 1, 2, 3, 4]


def test_pair_logps_puts_chosen_first(setup):
    wrapped, examples, tok = setup
    wrapped.eval()
    chosen, rejected = pair_logps(wrapped, examples[:3], tok.pad_id, torch.device("cpu"), contextlib.nullcontext)
    for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
        assert c == pytest.approx(by_hand(wrapped.model, e["chosen_tokens"], e["chosen_mask"]), abs=1e-4)
        assert r == pytest.approx(by_hand(wrapped.model, e["rejected_tokens"], e["rejected_mask"]), abs=1e-4)


def test_a_matching_log_is_reused_a_killed_one_finished_a_stale_one_recomputed(setup, tmp_path):
    wrapped, examples, tok = setup
    path = tmp_path / "ref.jsonl"
    run(wrapped, [dict(e) for e in examples], path, tok)
    full = path.read_bytes()
    seen = counting(wrapped)
    again = [dict(e) for e in examples]
    run(wrapped, again, path, tok)
    assert seen == [] and path.read_bytes() == full                   # all reused, nothing computed
    assert [e["ref_chosen_logps"] for e in again] == [json.loads(x)["ref_chosen_logps"]
                                                      for x in full.splitlines()[1:]]
    # killed after two pairs, in the middle of writing the third line
    lines = full.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][:10])
    run(wrapped, [dict(e) for e in examples], path, tok)
    assert seen == [2, 1] and path.read_bytes() == full               # pairs 2, 3 | 4 redone: the same file
    # another starting model or data set (meta): everything again
    seen.clear()
    run(wrapped, [dict(e) for e in examples], path, tok, meta={**META, "start_model": "other"})
    assert seen == [2, 2, 1] and read_jsonl(path)[0]["meta"]["start_model"] == "other"


def test_a_resumed_trained_state_never_computes_the_reference(setup, tmp_path):
    wrapped, examples, tok = setup
    path = tmp_path / "ref.jsonl"
    with pytest.raises(TrainingError, match=r"reference log-probs missing for 5 pairs"):
        run(wrapped, examples, path, tok, allow_compute=False)
    assert not path.exists()
