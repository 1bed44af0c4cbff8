"""Direct Preference Optimisation (Rafailov et al., 2023), the loss the paper trains each M_t with.

For a prompt x with a chosen answer y_w and a rejected answer y_l, let
    pi_logratios  = log pi(y_w|x)     - log pi(y_l|x)          (policy being trained)
    ref_logratios = log pi_ref(y_w|x) - log pi_ref(y_l|x)      (frozen starting model)
    logits        = pi_logratios - ref_logratios
The DPO loss is  -log sigmoid(beta * logits): it pushes the policy to prefer y_w more strongly
than the reference does. The implicit rewards are beta * (log pi - log pi_ref) for each answer;
"accuracy" is the share of pairs where the chosen reward exceeds the rejected one.

Three small variants:
  - label smoothing eps (conservative DPO, Mitchell 2023): the label is flipped with probability eps,
        loss = -(1 - eps) * log sigmoid(beta * logits) - eps * log sigmoid(-beta * logits);
  - IPO (Azar et al., 2023): a squared loss that does not saturate,
        loss = (logits - 1 / (2 * beta))^2;
  - DPO + NLL (Pang et al., 2024, "Iterative Reasoning Preference Optimization"): with weight
    alpha, the chosen answer's negative log-likelihood per token is added,
        loss += alpha * -log pi(y_w|x) / |y_w|,
    so the chosen answer itself stays likely while the margin grows (plain DPO can lower both).

Sequence log-probs are sums over the response tokens (srlm/logprobs.py), for IPO too (some
implementations average them over the answer's length for IPO; pass averages to get that).
Tests: `python -m pytest -q tests/test_dpo.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "dpo",
             reduction: str = "none", nll_alpha: float = 0.0,
             chosen_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss for a batch of pairs. All inputs (B,): summed log-probs of each answer.

    nll_alpha > 0 adds the chosen answer's per-token NLL (chosen_lengths (B,): its token counts).

    Returns (losses, chosen_rewards, rejected_rewards): losses is (B,) for reduction="none" or a
    scalar for "mean"; the rewards, beta * (policy - reference), are (B,) and detached.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if nll_alpha < 0 or nll_alpha > 0 and chosen_lengths is None:
        raise ValueError(f"nll_alpha must be >= 0 (got {nll_alpha}), and > 0 needs chosen_lengths")
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    logits = pi_logratios - ref_logratios

    if loss_type == "dpo":
        losses = (-F.logsigmoid(beta * logits) * (1.0 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "ipo":
        losses = (logits - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'dpo' or 'ipo', got {loss_type!r}")

    if nll_alpha > 0:
        losses = losses + nll_alpha * -policy_chosen_logps / chosen_lengths.clamp(min=1)

    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    if reduction == "mean":
        losses = losses.mean()
    elif reduction != "none":
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    return losses, chosen_rewards, rejected_rewards
