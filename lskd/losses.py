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


class KDLoss(NamedTuple):
    """Sums over non-padding positions, like fairseq's losses."""

    loss: torch.Tensor
    nll_loss: torch.Tensor
    kd_loss: torch.Tensor
    teacher_entropy: torch.Tensor  # of p_t^T, in nats; a by-product of the KD term, 0 when alpha = 0


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
        raise ValueError(f"teacher top-k {k} is larger than the vocabulary ({scores.size(-1)})")
    values, indices = tempered_log_probs(scores).topk(k, dim=-1)
    return values, indices


def kd_terms(
    teacher_scores: torch.Tensor,
    student_lprobs: torch.Tensor,
    temperature: float = 1.0,
    teacher_indices: torch.Tensor | None = None,
    teacher_normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position ``KL(p_t^T || p_s^T)`` and the teacher's entropy ``H(p_t^T)``, from one ``exp``.

    With ``teacher_indices`` the teacher lives on those k classes.
    ``student_lprobs`` are the student's full-vocabulary log-probabilities at T = 1; tempering
    them is ``log_softmax(lprobs / T)`` (log-softmax is shift invariant), skipped at T = 1.
    ``teacher_normalized`` says the scores already are log-probabilities over their classes, so at
    T = 1 they are used as they are: the KD term then costs a few passes over (N, V), no softmax.
    """
    if temperature == 1 and teacher_normalized:
        teacher_lp = upcast(teacher_scores)
    else:
        teacher_lp = tempered_log_probs(teacher_scores, temperature)
    student_lp = upcast(student_lprobs) if temperature == 1 else tempered_log_probs(student_lprobs, temperature)
    if teacher_indices is not None:
        student_lp = student_lp.gather(-1, teacher_indices)
    teacher_p = teacher_lp.exp()
    neg_entropy = expected_log_prob(teacher_p, teacher_lp)
    return neg_entropy - expected_log_prob(teacher_p, student_lp), -neg_entropy


def expected_log_prob(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v * log q_v`` over the last dimension, with ``0 * log 0 = 0``.

    A product and a sum: on CPU this is faster than ``torch.linalg.vecdot`` over a (N, V) batch
    (measured with torch 2.13). A zero probability facing ``log q = -inf`` (a teacher probability
    that underflowed) would give NaN; then, rarely, the product is recomputed with ``log q``
    clamped to the smallest finite value.
    """
    value = (p * log_q).sum(-1)
    if torch.isnan(value).any():
        value = (p * log_q.clamp_min(torch.finfo(log_q.dtype).min)).sum(-1)
    return value


def word_kd_loss(
    student_lprobs: torch.Tensor,
    target: torch.Tensor,
    teacher_scores: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
    epsilon: float,
    ignore_index: int | None = None,
    teacher_indices: torch.Tensor | None = None,
    teacher_normalized: bool = False,
) -> KDLoss:
    """``(1 - alpha) * LS-CE(student, gold; eps) + alpha * T^2 * KL(p_t^T || p_s^T)``, sum-reduced.

    ``student_lprobs``: (..., V) log-probabilities; ``target``: (...) gold indices;
    ``teacher_scores``: (..., V), or (..., k) with ``teacher_indices``; ``teacher_normalized``: they
    are log-probabilities over those classes (saves a softmax at T = 1). With ``alpha = 0`` the
    teacher is not needed (may be ``None``) and the result is exactly fairseq's LS loss.
    """
    validate_kd_args(alpha, temperature)
    student_lprobs = upcast(student_lprobs)
    ls_loss, nll_loss = label_smoothed_nll_loss(student_lprobs, target, epsilon, ignore_index)
    if alpha == 0:
        return KDLoss(ls_loss, nll_loss, torch.zeros_like(ls_loss), torch.zeros_like(ls_loss))
    if teacher_scores is None:
        raise ValueError("alpha > 0 needs teacher scores")
    if temperature == 1 and teacher_indices is None and not teacher_scores.requires_grad:
        return _one_soft_target_loss(student_lprobs, target, teacher_scores, alpha, epsilon, ignore_index,
                                     teacher_normalized, ls_loss, nll_loss)
    kl, entropy = kd_terms(teacher_scores, student_lprobs, temperature, teacher_indices, teacher_normalized)
    if ignore_index is not None:
        padding = target.eq(ignore_index)
        kl, entropy = kl.masked_fill(padding, 0.0), entropy.masked_fill(padding, 0.0)
    kd_loss = kl.sum()
    return KDLoss((1.0 - alpha) * ls_loss + alpha * temperature**2 * kd_loss, nll_loss, kd_loss, entropy.sum().detach())


def _one_soft_target_loss(
    student_lp: torch.Tensor,
    target: torch.Tensor,
    teacher_scores: torch.Tensor,
    alpha: float,
    epsilon: float,
    ignore_index: int | None,
    teacher_normalized: bool,
    ls_loss: torch.Tensor,
    nll_loss: torch.Tensor,
) -> KDLoss:
    """:func:`word_kd_loss` at T = 1 with a full, constant teacher distribution: one soft target.

    Both terms are ``-sum_v q_v log p_s,v`` plus a constant, so the student's gradient is that of a
    single soft target ``q = (1 - alpha) * q_ls + alpha * p_t`` (``q_ls``: the label-smoothed
    one-hot): ``-q`` per position. This is the NMT word-KD hot path, where V is large, so ``q`` is
    built in place in the teacher's probabilities and handed to autograd as the gradient; the
    loss value comes from sums already at hand, not from another pass over (N, V).
    """
    eps_i = epsilon / (student_lp.size(-1) - 1)
    with torch.no_grad():
        teacher_lp = upcast(teacher_scores) if teacher_normalized else tempered_log_probs(teacher_scores)
        # d loss / d student_lp = -q on kept positions, 0 on padding: built where p_t was
        gradient, neg_entropy, cross = _teacher_terms_and_gradient(teacher_lp, student_lp, alpha, (1.0 - alpha) * eps_i)
        padding = target.eq(ignore_index) if ignore_index is not None else torch.zeros_like(target, dtype=torch.bool)
        neg_entropy = neg_entropy.masked_fill(padding, 0.0)
        kl = (neg_entropy - cross).masked_fill(padding, 0.0)
        kd_loss = kl.sum()
        value = (1.0 - alpha) * ls_loss.detach() + alpha * kd_loss
        padded_rows = padding.reshape(-1).nonzero().squeeze(-1)
        gradient.view(-1, gradient.size(-1)).index_fill_(0, padded_rows, 0.0)  # those rows only, not all of (N, V)
        gold = torch.full_like(target, -(1.0 - alpha) * (1.0 - epsilon - eps_i), dtype=gradient.dtype)
        gradient.scatter_add_(-1, target.unsqueeze(-1), gold.masked_fill_(padding, 0.0).unsqueeze(-1))
    return KDLoss(_GivenGradient.apply(student_lp, value, gradient), nll_loss, kd_loss, -neg_entropy.sum())


def _teacher_terms_and_gradient(
    teacher_lp: torch.Tensor, student_lp: torch.Tensor, alpha: float, smoothing: float, block_bytes: int = 2**21
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``-(alpha * p_t + smoothing)``, ``sum_v p_t log p_t`` and ``sum_v p_t log p_s`` per position.

    Computed block of rows by block of rows, each block small enough to stay in cache while it is
    exponentiated, used in both sums and turned into the gradient: on CPU that reads the two (N, V)
    inputs from memory once and writes one (N, V) output, where tensor-by-tensor code makes about
    ten passes over (N, V). On other devices the whole batch is one block.
    """
    size = teacher_lp.size(-1)
    teacher_rows, student_rows = teacher_lp.reshape(-1, size), student_lp.detach().reshape(-1, size)
    gradient = torch.empty_like(teacher_rows)
    neg_entropy = gradient.new_empty(gradient.size(0))
    cross = torch.empty_like(neg_entropy)
    step = gradient.size(0) if gradient.device.type != "cpu" else max(1, block_bytes // (size * gradient.element_size()))
    for start in range(0, gradient.size(0), step):
        rows = slice(start, start + step)
        teacher_p = torch.exp(teacher_rows[rows], out=gradient[rows])
        neg_entropy[rows] = expected_log_prob(teacher_p, teacher_rows[rows])
        cross[rows] = expected_log_prob(teacher_p, student_rows[rows])
        scale_and_shift_(teacher_p, -alpha, -smoothing)
    shape = teacher_lp.shape[:-1]
    return gradient.view(teacher_lp.shape), neg_entropy.view(shape), cross.view(shape)


def scale_and_shift_(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """``x * scale + shift`` in place, in one pass over memory (``mul_`` then ``add_`` take two).

    ``lerp_`` computes ``x + w * (end - x) = (1 - w) * x + w * end``: ``w = 1 - scale``,
    ``end = shift / w``. ``scale`` must not be 1.
    """
    weight = 1.0 - scale
    return x.lerp_(x.new_full((), shift / weight), weight)


class _GivenGradient(torch.autograd.Function):
    """A loss whose value and gradient (for a unit upstream gradient) were computed together."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, value: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gradient)
        return value.clone()

    @staticmethod
    def backward(ctx, upstream: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (gradient,) = ctx.saved_tensors
        # loss.backward() on CPU: hand over the saved tensor (autograd only reads it), saving an
        # (N, V) product; a loss scale or a GPU (where .item() would synchronise) multiplies.
        if upstream.device.type == "cpu" and upstream.item() == 1.0:
            return gradient, None, None
        return gradient * upstream, None, None


def validate_kd_args(alpha: float, temperature: float) -> None:
    """Stop a run early on knobs that make no sense."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ValueError(f"kd temperature must be > 0, got {temperature}")
