"""Label-smoothed cross-entropy and word-level knowledge distillation, in plain torch.

One implementation serves the fairseq criterion and the generic (vision / binary) trainer.

Conventions:
* Label smoothing follows fairseq: ``eps`` is spread over the V - 1 non-gold classes,
  ``L_ls = (1 - eps) * NLL(y) + eps / (V - 1) * sum_{v != y} -log p_v``.
* The teacher is a distribution ``p_t`` at T = 1, given by *scores*: logits or log-probabilities
  (any per-position shift), over the whole vocabulary or over k indices (top-k). An ensemble's
  scores are the log of its members' averaged probabilities (:func:`ensemble_log_probs`).
  Temperature acts on that distribution: ``p_t^T = p_t^(1/T) / Z``, i.e. ``softmax(scores / T)``.
  For one model this is the usual ``softmax(z / T)``; the same definition holds for an ensemble
  and for a cached top-k, so the three teacher sources agree.
* ``L = (1 - alpha) * L_ls + alpha * T^2 * KL(p_t^T || p_s^T)``, summed over non-padding positions.
Everything is computed in log space in at least float32, so a zero teacher probability or a
confident student gives finite values under fp16/bf16 autocast.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from lskd.errors import InvalidValueError


class KDLoss(NamedTuple):
    """Sums over non-padding positions, like fairseq's losses."""

    loss: torch.Tensor
    nll_loss: torch.Tensor
    kd_loss: torch.Tensor
    teacher_entropy: torch.Tensor  # of p_t^T, in nats, detached; 0 without a teacher


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Up-cast half precision to float32 (float64 stays, for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def label_smoothed_nll_loss(
    lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, ignore_index: int | None = None, reduce: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """fairseq's label-smoothed NLL, operation for operation, so ``alpha = 0`` reproduces it exactly."""
    if target.dim() == lprobs.dim() - 1:
        target = target.unsqueeze(-1)
    nll_loss = -lprobs.gather(dim=-1, index=target)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    if ignore_index is not None:
        pad_mask = target.eq(ignore_index)
        nll_loss.masked_fill_(pad_mask, 0.0)
        smooth_loss.masked_fill_(pad_mask, 0.0)
    else:
        nll_loss = nll_loss.squeeze(-1)
        smooth_loss = smooth_loss.squeeze(-1)
    if reduce:
        nll_loss = nll_loss.sum()
        smooth_loss = smooth_loss.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


def tempered_log_probs(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(scores / T)`` over the last dimension, in at least float32."""
    return F.log_softmax(upcast(scores) / temperature, dim=-1)


def ensemble_log_probs(member_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Log of the members' averaged probabilities (T = 1): the ensemble teacher's scores."""
    stacked = torch.stack([tempered_log_probs(s) for s in member_scores])
    return torch.logsumexp(stacked, dim=0) - math.log(len(member_scores))


def topk_scores(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k best log-probabilities and their indices (renormalised later, by temperature)."""
    if k > scores.size(-1):
        raise InvalidValueError(f"teacher top-k {k} is larger than the vocabulary ({scores.size(-1)})")
    values, indices = tempered_log_probs(scores).topk(k, dim=-1)
    return values, indices


def kd_terms(
    teacher_scores: torch.Tensor,
    student_lprobs: torch.Tensor,
    temperature: float = 1.0,
    teacher_indices: torch.Tensor | None = None,
    teacher_normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position, ``KL(p_t^T || p_s^T) = sum_v p_t^T (log p_t^T - log p_s^T)`` and ``H(p_t^T)``.

    ``teacher_scores``: (..., V), or (..., k) on the classes ``teacher_indices``;
    ``student_lprobs``: the student's (..., V) log-probabilities at T = 1, tempered here as
    ``log_softmax(lprobs / T)`` (log-softmax is shift invariant). ``teacher_normalized``: the scores
    already are log-probabilities over their classes, so at T = 1 no softmax is taken.
    A teacher probability of 0 (a score of -inf) contributes ``0 * log 0 = 0``.
    """
    if temperature == 1 and teacher_normalized:
        teacher_lp = upcast(teacher_scores)
    else:
        teacher_lp = tempered_log_probs(teacher_scores, temperature)
    student_lp = upcast(student_lprobs) if temperature == 1 else tempered_log_probs(student_lprobs, temperature)
    if teacher_indices is not None:
        student_lp = student_lp.gather(-1, teacher_indices)
    teacher_p = teacher_lp.exp()
    # sum_v p_t log p_t = -H(p_t): a zero p_t gives 0 * -inf = NaN, which nansum takes as 0 * log 0 = 0
    neg_entropy = (teacher_p * teacher_lp).nansum(-1)
    cross = (teacher_p * student_lp).sum(-1)  # sum_v p_t log p_s (log p_s is finite)
    return neg_entropy - cross, -neg_entropy


def expected_log_prob(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v * log q_v`` over the last dimension, with ``0 * log 0 = 0`` (``log q`` = -inf is
    raised to the smallest finite value, so a zero ``p`` gives 0 where ``0 * -inf`` would be NaN)."""
    return (p * log_q.clamp_min(torch.finfo(log_q.dtype).min)).sum(-1)


def word_kd_loss(
    student_scores: torch.Tensor,
    target: torch.Tensor,
    teacher_scores: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
    epsilon: float,
    ignore_index: int | None = None,
    teacher_indices: torch.Tensor | None = None,
    teacher_normalized: bool = False,
    student_normalized: bool = True,
) -> KDLoss:
    """``(1 - alpha) * LS-CE(student, gold; eps) + alpha * T^2 * KL(p_t^T || p_s^T)``, sum-reduced.

    ``student_scores``: (..., V) log-probabilities, or logits with ``student_normalized=False``
    (normalised here with ``log_softmax`` in at least float32, as fairseq does); ``target``: (...)
    gold indices; ``teacher_scores``: (..., V), or (..., k) with ``teacher_indices``, or ``None``
    (then ``alpha`` must be 0); ``teacher_normalized``: they are log-probabilities over those classes.
    The two terms are written as they read, and autograd differentiates them (to any order).
    ``loss``, ``nll_loss`` and ``kd_loss`` are functions of the student with autograd history;
    ``kd_loss`` is the KL whenever a teacher is given (at ``alpha = 0`` too, as a diagnostic) and a
    constant 0 without one; ``teacher_entropy`` is detached. With ``alpha = 0`` the loss is exactly
    fairseq's label-smoothed cross-entropy.
    """
    validate_kd_args(alpha, temperature)
    if alpha > 0 and teacher_scores is None:
        raise InvalidValueError("alpha > 0 needs teacher scores")
    student_lprobs = upcast(student_scores) if student_normalized else F.log_softmax(upcast(student_scores), dim=-1)
    ls_loss, nll_loss = label_smoothed_nll_loss(student_lprobs, target, epsilon, ignore_index)
    if teacher_scores is None:
        zero = torch.zeros_like(ls_loss)
        return KDLoss(ls_loss, nll_loss, zero, zero)
    kl, entropy = kd_terms(teacher_scores, student_lprobs, temperature, teacher_indices, teacher_normalized)
    if ignore_index is not None:
        padding = target.eq(ignore_index)
        kl, entropy = kl.masked_fill(padding, 0.0), entropy.masked_fill(padding, 0.0)
    kd_loss = kl.sum()
    loss = ls_loss if alpha == 0 else (1.0 - alpha) * ls_loss + alpha * temperature**2 * kd_loss
    return KDLoss(loss, nll_loss, kd_loss, entropy.sum().detach())


def validate_kd_args(alpha: float, temperature: float) -> None:
    """Stop a run early on knobs that make no sense."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidValueError(f"kd alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise InvalidValueError(f"kd temperature must be > 0, got {temperature}")
