"""Tests for srlm/trainer.py's pieces: the learning-rate schedule on hand-computed numbers, and one
step's loss and gradient (any micro-batch size) against the plain formulas written out here.

train() end to end (SFT, DPO, resume, torchrun parity, NaN stop) runs through train.py in
tests/test_train.py.

    python -m pytest -q tests/test_trainer.py
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from conftest import small_tokenizer
from srlm.data import tokenize
from srlm.logprobs import LogprobModel
from srlm.model import Llama, ModelArgs
from srlm.tokenizer import Tokenizer
from srlm.trainer import TrainConfig, lr_at, micro_batches, step_losses, total_steps_for

QA = [("What is 2 + 2?", "4"), ("Name a colour.", "Blue."), ("Say hi.", "Hi there!"), ("Spell cat.", "C A T."),
      ("Largest planet?", "Jupiter.")]


def test_lr_schedule_hand_computed():
    """lr 1.0 -> min 0.1 over 6 steps with 2 warmup steps: warmup 0.5, 1.0; then linear decay over
    the remaining 4 steps, (step - 2) / 3 of the way: 1.0, 0.7, 0.4, 0.1."""
    got = [lr_at(s, 6, 1.0, 0.1, 2) for s in range(6)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.7, 0.4, 0.1])


def test_total_steps_and_micro_batches():
    cfg = TrainConfig(stage="sft", data=["d"], out="o", init="m", batch_size=4, epochs=2.5)
    assert total_steps_for(cfg, 10) == 7                       # ceil(2.5 * 10 / 4)
    cfg.max_steps = 3
    assert total_steps_for(cfg, 10) == 3
    assert micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


@pytest.fixture(scope="module")
def setup():
    tok = Tokenizer(small_tokenizer())
    torch.manual_seed(0)
    model = Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16, max_seq_len=64,
                            attn_impl="torch"))
    return tok, model


def answer_logp(model, tokens, mask) -> torch.Tensor:
    """sum over t >= 1 with mask[t] = 1 of log softmax(logits[t - 1])[tokens[t]], one sequence, no padding."""
    logp = F.log_softmax(model(torch.tensor([tokens]))[0].float(), dim=-1)  # (T, vocab)
    return sum(logp[t - 1, tokens[t]] for t in range(1, len(tokens)) if mask[t])


def grads_of(model):
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("micro", [1, 2, 5])
def test_sft_step_is_the_mean_nll_over_every_answer_token(setup, micro):
    tok, model = setup
    examples, _ = tokenize([{"prompt": q, "response": a} for q, a in QA], "sft", tok, 64)
    idx = [4, 0, 2, 1, 3]
    cfg = TrainConfig(stage="sft", data=["d"], out="o", init="m", micro_batch_size=micro, logprob_impl="torch")
    model.zero_grad()
    sums = step_losses(LogprobModel(model, impl="torch"), cfg, examples, idx, 0, 1, tok.pad_id, torch.device("cpu"),
                       contextlib.nullcontext)
    got = grads_of(model)
    model.zero_grad()
    n_targets = sum(sum(e["loss_mask"][1:]) for e in examples)
    loss = -sum(answer_logp(model, e["tokens"], e["loss_mask"]) for e in examples) / n_targets
    loss.backward()
    assert sums["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for k, g in grads_of(model).items():
        torch.testing.assert_close(got[k], g, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("micro,nll_alpha", [(1, 0.0), (3, 0.0), (3, 0.7)])
def test_dpo_step_is_the_mean_of_minus_log_sigmoid_of_the_margin(setup, micro, nll_alpha):
    """loss = mean over pairs of -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), plus
    nll_alpha * -pi_c / (chosen answer tokens) for DPO + NLL."""
    tok, model = setup
    rows = [{"prompt": q, "chosen": a, "rejected": "No idea."} for q, a in QA]
    examples, _ = tokenize(rows, "dpo", tok, 64)
    refs = [(-3.0 - i, -5.0 + 0.5 * i) for i in range(len(examples))]  # hand-picked reference log-probs
    for e, (rc, rr) in zip(examples, refs):
        e["ref_chosen_logps"], e["ref_rejected_logps"] = rc, rr
    cfg = TrainConfig(stage="dpo", data=["d"], out="o", init="m", micro_batch_size=micro, beta=0.5,
                      logprob_impl="torch", nll_alpha=nll_alpha)
    model.eval()  # dropout is 0 anyway; eval keeps both passes identical
    model.zero_grad()
    sums = step_losses(LogprobModel(model, impl="torch"), cfg, examples, [0, 1, 2, 3, 4], 0, 1, tok.pad_id,
                       torch.device("cpu"), contextlib.nullcontext)
    got = grads_of(model)
    model.zero_grad()
    losses, margins = [], []
    for e, (rc, rr) in zip(examples, refs):
        margin = 0.5 * ((answer_logp(model, e["chosen_tokens"], e["chosen_mask"]) - rc)
                        - (answer_logp(model, e["rejected_tokens"], e["rejected_mask"]) - rr))
        chosen_logp = answer_logp(model, e["chosen_tokens"], e["chosen_mask"])
        losses.append(-F.logsigmoid(margin) - nll_alpha * chosen_logp / sum(e["chosen_mask"][1:]))
        margins.append(margin.item())
    loss = sum(losses) / len(losses)
    loss.backward()
    assert sums["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert sums["rewards/margins"].item() == pytest.approx(sum(margins) / len(margins), rel=1e-5, abs=1e-6)
    assert sums["rewards/accuracies"].item() == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    for k, g in grads_of(model).items():
        torch.testing.assert_close(got[k], g, rtol=1e-4, atol=1e-6, msg=k)
