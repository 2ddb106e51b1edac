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
    (normalised here, in at least float32 as fairseq does); ``target``: (...) gold indices;
    ``teacher_scores``: (..., V), or (..., k) with ``teacher_indices``; ``teacher_normalized``: they
    are log-probabilities over those classes (saves a softmax at T = 1). With ``alpha = 0`` the
    teacher is not needed (may be ``None``) and the result is exactly fairseq's LS loss.
    Pass logits when they are at hand: at T = 1 with a full teacher the student's normalisation,
    the loss and its gradient with respect to the logits come from one pass over (N, V), and no
    (N, V) log-probabilities are stored for backward.
    """
    validate_kd_args(alpha, temperature)
    if alpha > 0 and teacher_scores is None:
        raise ValueError("alpha > 0 needs teacher scores")
    if alpha > 0 and temperature == 1 and teacher_indices is None and not teacher_scores.requires_grad:
        # it normalises the student itself; log-probabilities are logits too: log_softmax(log p) = log p
        return _one_soft_target_loss(student_scores, target, teacher_scores, alpha, epsilon, ignore_index,
                                     teacher_normalized)
    student_lprobs = upcast(student_scores) if student_normalized else F.log_softmax(upcast(student_scores), dim=-1)
    ls_loss, nll_loss = label_smoothed_nll_loss(student_lprobs, target, epsilon, ignore_index)
    if alpha == 0:
        return KDLoss(ls_loss, nll_loss, torch.zeros_like(ls_loss), torch.zeros_like(ls_loss))
    kl, entropy = kd_terms(teacher_scores, student_lprobs, temperature, teacher_indices, teacher_normalized)
    if ignore_index is not None:
        padding = target.eq(ignore_index)
        kl, entropy = kl.masked_fill(padding, 0.0), entropy.masked_fill(padding, 0.0)
    kd_loss = kl.sum()
    return KDLoss((1.0 - alpha) * ls_loss + alpha * temperature**2 * kd_loss, nll_loss, kd_loss, entropy.sum().detach())


def _one_soft_target_loss(
    student_logits: torch.Tensor,
    target: torch.Tensor,
    teacher_scores: torch.Tensor,
    alpha: float,
    epsilon: float,
    ignore_index: int | None,
    teacher_normalized: bool,
) -> KDLoss:
    """:func:`word_kd_loss` at T = 1 with a full, constant teacher distribution: one soft target.

    Both terms are ``-sum_v q_v log p_s,v`` plus a constant, so the loss is a cross-entropy with a
    single soft target ``q = (1 - alpha) * q_ls + alpha * p_t`` (``q_ls``: the label-smoothed
    one-hot), whose gradient with respect to the student's logits is ``p_s - q`` per position.
    This is the NMT word-KD hot path, where V is large, so that gradient is built in place in the
    teacher's probabilities, in the pass that also normalises the student and takes the sums
    the loss value is made of (:func:`_soft_target_pass`), and handed to autograd.
    """
    size = student_logits.size(-1)
    eps_i = epsilon / (size - 1)
    with torch.no_grad():
        teacher_lp = upcast(teacher_scores) if teacher_normalized else tempered_log_probs(teacher_scores)
        # one dtype, at least float32, for the sums and the gradient
        teacher_lp = teacher_lp.to(torch.promote_types(teacher_lp.dtype, upcast(student_logits[..., :0]).dtype))
        logit_rows, target = student_logits.detach().reshape(-1, size), target.reshape(-1)
        padding = target.eq(ignore_index) if ignore_index is not None else torch.zeros_like(target, dtype=torch.bool)
        gradient, sums = _soft_target_pass(teacher_lp.reshape(-1, size), logit_rows, padding, alpha,
                                           (1.0 - alpha) * eps_i)
        gold = torch.full_like(target, -(1.0 - alpha) * (1.0 - epsilon - eps_i), dtype=gradient.dtype)
        gradient.scatter_add_(-1, target.unsqueeze(-1), gold.masked_fill_(padding, 0.0).unsqueeze(-1))
        gold_logit = logit_rows.gather(-1, target.unsqueeze(-1)).squeeze(-1).to(gradient.dtype)
        nll_loss = (sums.log_normalizer - gold_logit).masked_fill_(padding, 0.0).sum()
        ls_loss = (1.0 - epsilon - eps_i) * nll_loss - eps_i * sums.student_log_prob
        kd_loss = sums.teacher_neg_entropy - sums.cross
        value = (1.0 - alpha) * ls_loss + alpha * kd_loss
    loss = _GivenGradient.apply(student_logits, value, gradient.view(student_logits.shape))
    return KDLoss(loss, nll_loss, kd_loss, -sums.teacher_neg_entropy)


class _PassSums(NamedTuple):
    """What :func:`_soft_target_pass` sums over kept positions, and ``log sum_v exp z_v`` per row."""

    teacher_neg_entropy: torch.Tensor  # sum_v p_t log p_t
    cross: torch.Tensor  # sum_v p_t log p_s
    student_log_prob: torch.Tensor  # sum_v log p_s (fairseq's smooth term, negated)
    log_normalizer: torch.Tensor  # (N,): log p_s = z - log_normalizer


def _soft_target_pass(
    teacher_rows: torch.Tensor,
    logit_rows: torch.Tensor,
    padding: torch.Tensor,
    alpha: float,
    smoothing: float,
    block_bytes: int | None = None,
) -> tuple[torch.Tensor, _PassSums]:
    """``p_s - (alpha * p_t + smoothing)`` on kept rows (0 on padded ones) and :class:`_PassSums`.

    (N, V) rows, taken block by block, each block small enough to stay in cache while the student
    is normalised, the teacher exponentiated, both summed and the gradient formed: on CPU the two
    (N, V) inputs are read from memory once and one (N, V) output is written, where
    tensor-by-tensor code makes about fifteen passes. A block is 512 KiB of each tensor per
    thread, so that each thread's share fits a core's L2 cache (the fastest size measured, at one
    and at two threads). Padded rows of ``p_t`` are zeroed before the sums, so each sum over both
    distributions is one flat dot product over the block; ``sum_v p_t = 1`` turns
    ``sum_v p_t (z - m)`` into ``sum_v p_t log p_s``. On other devices the whole batch is one block.
    """
    rows, size = teacher_rows.shape
    gradient = torch.empty_like(teacher_rows)
    block_bytes = block_bytes or 2**19 * torch.get_num_threads()
    step = max(1, rows if gradient.device.type != "cpu" else block_bytes // (size * gradient.element_size()))
    starts = range(0, rows, step)
    padded = padding.nonzero().squeeze(-1)
    first_padded = torch.searchsorted(padded, torch.tensor([*starts, rows], device=padded.device)).tolist()
    neg_entropy, cross_shifted = gradient.new_zeros(()), gradient.new_zeros(())
    shifted_sums, row_max, log_totals = gradient.new_empty(rows), gradient.new_empty(rows), gradient.new_empty(rows)
    for block, start in enumerate(starts):
        block_rows = slice(start, start + step)
        padded_here = padded[first_padded[block] : first_padded[block + 1]] - start
        teacher, logits = teacher_rows[block_rows], logit_rows[block_rows]
        teacher_p = torch.exp(teacher, out=gradient[block_rows]).index_fill_(0, padded_here, 0.0)
        neg_entropy += torch.dot(teacher_p.view(-1), teacher.reshape(-1))
        top = logits.amax(-1, keepdim=True).to(gradient.dtype)
        shifted = logits - top  # z - m <= 0: exp cannot overflow
        cross_shifted += torch.dot(teacher_p.view(-1), shifted.view(-1))
        shifted_sums[block_rows] = shifted.sum(-1)
        student_e = shifted.exp_()
        total = student_e.sum(-1, keepdim=True)
        row_max[block_rows], log_totals[block_rows] = top.squeeze(-1), total.log().squeeze(-1)
        student_p_scale = total.reciprocal_()
        scale_and_shift_(teacher_p, -alpha, -smoothing).addcmul_(student_e, student_p_scale)
        teacher_p.index_fill_(0, padded_here, 0.0)
    kept_log_totals = log_totals.masked_fill(padding, 0.0)
    sums = _PassSums(
        teacher_neg_entropy=neg_entropy,
        cross=cross_shifted - kept_log_totals.sum(),
        student_log_prob=shifted_sums.masked_fill_(padding, 0.0).sum() - size * kept_log_totals.sum(),
        log_normalizer=row_max + log_totals,
    )
    if torch.isnan(neg_entropy + cross_shifted):  # a zero p_t met log 0 = -inf: take 0 * log 0 = 0 instead
        kept_p = teacher_rows.exp().masked_fill_(padding.unsqueeze(-1), 0.0)
        student_lp = logit_rows.to(gradient.dtype) - sums.log_normalizer.unsqueeze(-1)
        sums = sums._replace(teacher_neg_entropy=expected_log_prob(kept_p, teacher_rows).sum(),
                             cross=expected_log_prob(kept_p, student_lp).sum())
    return gradient, sums


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
