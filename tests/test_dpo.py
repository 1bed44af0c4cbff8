"""DPO loss (srlm/dpo.py) against numbers worked out by hand, plus gradient checks.

Run: python -m pytest -q tests/test_dpo.py
"""
import math

import pytest
import torch

from srlm.dpo import dpo_loss

# Two pairs, beta = 0.5. Sequence log-probs (policy, reference):
#   pair 0: chosen -1 vs ref -2, rejected -3 vs ref -2
#   pair 1: chosen -4 vs ref -2, rejected -1 vs ref -2
POLICY_CHOSEN = torch.tensor([-1.0, -4.0])
POLICY_REJECTED = torch.tensor([-3.0, -1.0])
REF_CHOSEN = torch.tensor([-2.0, -2.0])
REF_REJECTED = torch.tensor([-2.0, -2.0])
BETA = 0.5


def test_dpo_loss_hand_computed():
    """pair 0: pi_logratios = -1 - (-3) = 2, ref_logratios = 0, logits = 2, beta * logits = 1
         loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326168751822286
         chosen reward = 0.5 * (-1 + 2) = 0.5, rejected reward = 0.5 * (-3 + 2) = -0.5
    pair 1: pi_logratios = -4 - (-1) = -3, logits = -3, beta * logits = -1.5
         loss = log(1 + e^1.5) = 1.7014132779827524
         chosen reward = 0.5 * (-4 + 2) = -1.0, rejected reward = 0.5 * (-1 + 2) = 0.5
    """
    losses, chosen_rewards, rejected_rewards = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED,
                                                        beta=BETA)
    torch.testing.assert_close(losses, torch.tensor([0.31326168751822286, 1.7014132779827524]))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.5]))
    mean, _, _ = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA, reduction="mean")
    torch.testing.assert_close(mean, torch.tensor((0.31326168751822286 + 1.7014132779827524) / 2))


def test_policy_equal_to_reference_gives_log2():
    """When the policy is the reference, logits = 0 and the loss is -log sigmoid(0) = log 2 for any beta."""
    x = torch.tensor([-5.0, -0.3, -12.0])
    y = torch.tensor([-2.0, -7.0, -1.0])
    losses, cr, rr = dpo_loss(x, y, x.clone(), y.clone(), beta=0.37)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))
    assert torch.all(cr == 0) and torch.all(rr == 0)


def test_label_smoothing_hand_computed():
    """Conservative DPO, eps = 0.1, pair 0 (beta * logits = 1):
    loss = 0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1) = 0.9 * 0.31326168751822286 + 0.1 * 1.3132616875182228
         = 0.4132616875182229
    """
    losses, _, _ = dpo_loss(POLICY_CHOSEN[:1], POLICY_REJECTED[:1], REF_CHOSEN[:1], REF_REJECTED[:1],
                            beta=BETA, label_smoothing=0.1)
    torch.testing.assert_close(losses, torch.tensor([0.4132616875182229]))


def test_ipo_hand_computed():
    """IPO, beta = 0.5, so the target margin is 1 / (2 * beta) = 1:
    pair 0: logits = 2  -> (2 - 1)^2 = 1;   pair 1: logits = -3 -> (-3 - 1)^2 = 16.
    """
    losses, _, _ = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA, loss_type="ipo")
    torch.testing.assert_close(losses, torch.tensor([1.0, 16.0]))


def test_gradient_hand_computed():
    """d loss / d policy_chosen_logps = -beta * sigmoid(-beta * logits); pair 0: -0.5 * sigmoid(-1)
    = -0.5 / (1 + e) = -0.13447071068499755, and the rejected gradient is its negative.
    Rewards are detached: they carry no gradient.
    """
    pc = POLICY_CHOSEN[:1].clone().requires_grad_()
    pr = POLICY_REJECTED[:1].clone().requires_grad_()
    losses, cr, rr = dpo_loss(pc, pr, REF_CHOSEN[:1], REF_REJECTED[:1], beta=BETA)
    losses.sum().backward()
    torch.testing.assert_close(pc.grad, torch.tensor([-0.13447071068499755]))
    torch.testing.assert_close(pr.grad, torch.tensor([0.13447071068499755]))
    assert not cr.requires_grad and not rr.requires_grad


@pytest.mark.parametrize("loss_type,smoothing", [("dpo", 0.0), ("dpo", 0.2), ("ipo", 0.0)])
def test_gradcheck(loss_type, smoothing):
    """Autograd against finite differences in float64, every input."""
    g = torch.Generator().manual_seed(0)
    inputs = [(-10 * torch.rand(4, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(4)]

    def f(*xs):
        return dpo_loss(*xs, beta=0.3, label_smoothing=smoothing, loss_type=loss_type)[0]

    assert torch.autograd.gradcheck(f, inputs)


def test_bad_arguments():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)


def test_dpo_plus_nll_hand_computed():
    """DPO + NLL, alpha = 0.5, chosen answers of 2 and 4 tokens. Pair 0: beta * logits = 1, so DPO
    gives log(1 + e^-1) = 0.31326168751822286, and the NLL term 0.5 * 1 / 2 = 0.25: 0.5632616875182229.
    Pair 1: beta * logits = -1.5, log(1 + e^1.5) = 1.7014132779827524, NLL 0.5 * 4 / 4 = 0.5:
    2.2014132779827524. d loss / d chosen adds -alpha / length: pair 0 -0.13447071068499755 - 0.25.
    """
    chosen = POLICY_CHOSEN.clone().requires_grad_(True)
    losses, cr, _ = dpo_loss(chosen, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA, nll_alpha=0.5,
                             chosen_lengths=torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(losses, torch.tensor([0.5632616875182229, 2.2014132779827524]))
    losses.sum().backward()
    assert chosen.grad[0].item() == pytest.approx(-0.13447071068499755 - 0.25, rel=1e-6)
    plain, plain_cr, _ = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA)
    torch.testing.assert_close(cr, plain_cr)              # the rewards are DPO's own
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, nll_alpha=0.5)
    with pytest.raises(ValueError, match="nll_alpha"):
        dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, nll_alpha=-1.0,
                 chosen_lengths=torch.tensor([2.0, 4.0]))
