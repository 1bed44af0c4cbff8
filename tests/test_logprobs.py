"""Sequence and token log-probs (srlm/logprobs.py): hand numbers, masking, padding, pairs, backends.

Run: python -m pytest -q tests/test_logprobs.py
"""
import math

import pytest
import torch
import torch.nn.functional as F

from srlm.logprobs import (IGNORE_INDEX, LogprobModel, masked_token_logprobs, resolve_impl, sequence_logprobs,
                           shifted_targets, token_logprobs, token_logprobs_reference, unwrap_state_dict)
from srlm.model import Llama, ModelArgs


def test_token_logprobs_hand_computed():
    """weight rows e0, e1, 0 and hidden (ln 2, 0) give logits (ln 2, 0, 0), so
    softmax = (2/4, 1/4, 1/4): log p(0) = log 0.5 = -0.6931471805599453, log p(1) = log 0.25
    = -1.3862943611198906; an ignored row gives exactly 0.
    """
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    hidden = torch.tensor([[math.log(2), 0.0]] * 3)
    targets = torch.tensor([0, 1, IGNORE_INDEX])
    expected = torch.tensor([-0.6931471805599453, -1.3862943611198906, 0.0])
    torch.testing.assert_close(token_logprobs_reference(hidden, weight, targets), expected)
    torch.testing.assert_close(token_logprobs(hidden, weight, targets), expected)


def test_shifted_targets_hand_computed():
    """tokens [1 5 6 7 0], mask [0 0 1 1 0]: position t predicts tokens[t+1] when mask[t+1] = 1,
    so targets = [-100, 6, 7, -100] (the prompt token 5 and the padding are not targets)."""
    tokens = torch.tensor([[1, 5, 6, 7, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 0]])
    assert shifted_targets(tokens, mask).tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Llama(ModelArgs.preset("tiny", vocab_size=50, attn_impl="torch"))
    return m.eval()


def reference_sum(model, tokens: list[int], mask: list[int]) -> torch.Tensor:
    """Unpadded row, full logits, an explicit loop: sum_t [mask[t+1]] log softmax(logits[t])[tokens[t+1]]."""
    x = torch.tensor([tokens])
    logp = F.log_softmax(model(x)[0].float(), dim=-1)  # (T, vocab)
    total = torch.zeros(())
    for t in range(len(tokens) - 1):
        if mask[t + 1]:
            total = total + logp[t, tokens[t + 1]]
    return total


def test_sequence_logprobs_excludes_prompt_and_padding(model):
    """Two rows of different lengths, right-padded (with a pad id that is a real token, 3, to be sure
    validity comes from the mask): each row's sum equals the unpadded single-row reference."""
    rows = [([1, 7, 8, 9, 10, 2], [0, 0, 0, 1, 1, 1]),
            ([1, 11, 12, 2], [0, 0, 1, 1])]
    T = 6
    tokens = torch.full((2, T), 3)
    mask = torch.zeros((2, T), dtype=torch.long)
    for b, (ids, m) in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(m)] = torch.tensor(m)
    got = sequence_logprobs(model, tokens, mask, impl="torch")
    expected = torch.stack([reference_sum(model, ids, m) for ids, m in rows])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The average divides by the number of target tokens (3 and 2).
    avg = sequence_logprobs(model, tokens, mask, average=True, impl="torch")
    torch.testing.assert_close(avg, expected / torch.tensor([3.0, 2.0]), rtol=1e-5, atol=1e-5)


def test_pair_halves_treated_alike(model):
    """A DPO batch stacks chosen and rejected rows with one padding length; each half's value must
    equal the value of that answer scored on its own (same prompt masked, padding ignored)."""
    prompt = [1, 20, 21, 22]
    chosen, rejected = [30, 31, 2], [40, 41, 42, 43, 44, 2]
    rows = [(prompt + chosen, [0] * 4 + [1] * 3), (prompt + rejected, [0] * 4 + [1] * 6)]
    T = max(len(r[0]) for r in rows)
    tokens = torch.zeros((2, T), dtype=torch.long)
    mask = torch.zeros((2, T), dtype=torch.long)
    for b, (ids, m) in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(m)] = torch.tensor(m)
    both = sequence_logprobs(model, tokens, mask, impl="torch")
    for b, (ids, m) in enumerate(rows):
        alone = sequence_logprobs(model, torch.tensor([ids]), torch.tensor([m]), impl="torch")
        torch.testing.assert_close(both[b], alone[0], rtol=1e-5, atol=1e-5)


def test_logprob_model_wrapper(model):
    """LogprobModel (what training runs) against the explicit loop over full logits, row by row,
    with hand-placed padding; it owns exactly the Llama's parameters."""
    rows = [([1, 4, 5, 6, 2], [0, 0, 1, 1, 1]), ([1, 9, 2], [0, 1, 1])]
    tokens = torch.tensor([rows[0][0], rows[1][0] + [3, 3]])  # pad id 3 is a real token: the mask decides
    mask = torch.tensor([rows[0][1], rows[1][1] + [0, 0]])
    wrapped = LogprobModel(model, impl="torch")
    expected = torch.stack([reference_sum(model, t, m) for t, m in rows])
    torch.testing.assert_close(wrapped(tokens, mask), expected, rtol=1e-5, atol=1e-5)
    per_token = masked_token_logprobs(model, tokens, mask, impl="torch")  # (B, T), zero where not counted
    torch.testing.assert_close(per_token.sum(-1), expected, rtol=1e-5, atol=1e-5)
    keys = set(unwrap_state_dict(wrapped.state_dict()))
    assert keys == set(model.state_dict())


def test_resolve_impl():
    assert resolve_impl("torch", torch.device("cpu")) == "torch"
    assert resolve_impl(None, torch.device("cpu")) == "torch"  # the plain path off the GPU
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    if torch.cuda.is_available():  # the fused kernel is the GPU default
        assert resolve_impl(None, torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("fast", torch.device("cpu"))


def test_kernel_backends_match_plain_path(model):
    """kernels/logprobs.py (chunked PyTorch; Triton through the interpreter) gives the plain path's
    values and gradients through the whole model."""
    pytest.importorskip("kernels.logprobs")
    tokens = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 9, 8, 7, 6, 2]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    impls = ["chunked", "triton"] if torch.cuda.is_available() or _interpreting() else ["chunked"]
    results = {}
    for impl in ["torch"] + impls:
        model.zero_grad()
        out = sequence_logprobs(model, tokens, mask, impl=impl)
        out.sum().backward()
        results[impl] = (out.detach(), model.output.weight.grad.clone(), model.layers[0].attention.wq.weight.grad.clone())
    for impl in impls:
        for a, b in zip(results[impl], results["torch"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    model.zero_grad()


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def test_resolve_impl_triton_off_the_gpu_is_an_error(monkeypatch):
    """Asked for the Triton kernel where it cannot run: a clear error, not a silent plain path."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device runs the kernel")
    pytest.importorskip("kernels.logprobs")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="'triton' needs a CUDA device"):
        resolve_impl("triton", torch.device("cpu"))


def test_missing_kernels_fall_back_but_broken_kernels_raise(monkeypatch, tmp_path):
    """Only an absent package means "no kernels"; an error inside kernels/logprobs.py surfaces."""
    import sys

    from srlm import logprobs

    monkeypatch.setitem(sys.modules, "kernels.logprobs", None)  # the import raises ImportError
    assert logprobs._kernels() is None
    assert resolve_impl(None, torch.device("cpu")) == "torch"
    broken = tmp_path / "kernels"
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "logprobs.py").write_text("raise RuntimeError('a bug in the kernels')\n")
    monkeypatch.delitem(sys.modules, "kernels.logprobs")
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))  # this test's broken copy of the package comes first
    with pytest.raises(RuntimeError, match="a bug in the kernels"):
        logprobs._kernels()
