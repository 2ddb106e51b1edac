"""Diagnostics of a teacher next to its student, summed over non-padding positions.

They let a user see at a glance how confident (entropy) and how good (NLL of the gold token) a
teacher is, and how far the student follows it (top-1 agreement). Sums, not means, so that
fairseq can add them across batches and workers before dividing.
"""
from __future__ import annotations

import torch

from lskd.losses import tempered_log_probs


@torch.no_grad()
def teacher_statistics(
    teacher_scores: torch.Tensor,
    student_lprobs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    teacher_indices: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sums over positions where ``mask`` is true (flattened inputs: (N, V) or (N, k), (N,)).

    ``teacher_scores`` are log-probabilities (or logits) at T = 1. With ``teacher_indices`` (top-k),
    the entropy is that of the renormalised top-k distribution, and the gold token's NLL is summed
    only where the gold token is among the k (``teacher_gold_in_topk`` counts those positions).
    """
    mask = mask.bool()
    renormalised = tempered_log_probs(teacher_scores)
    entropy = -(renormalised.exp() * renormalised).nan_to_num(0.0).sum(-1)
    student_top1 = student_lprobs.argmax(-1)
    if teacher_indices is None:
        teacher_top1 = teacher_scores.argmax(-1)
        gold_lp = renormalised.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        covered = mask
    else:
        teacher_top1 = teacher_indices.gather(-1, teacher_scores.argmax(-1, keepdim=True)).squeeze(-1)
        hit = teacher_indices.eq(target.unsqueeze(-1))
        covered = mask & hit.any(-1)
        # the stored scores are the teacher's own log-probabilities, not renormalised ones
        gold_lp = torch.where(hit, teacher_scores.float(), torch.zeros_like(teacher_scores, dtype=torch.float)).sum(-1)
    stats = {
        "teacher_entropy": entropy.masked_fill(~mask, 0.0).sum(),
        "teacher_agree": (teacher_top1.eq(student_top1) & mask).sum(),
        "teacher_nll": (-gold_lp).masked_fill(~covered, 0.0).sum(),
        "teacher_nll_count": covered.sum(),
    }
    if teacher_indices is not None:
        stats["teacher_gold_in_topk"] = covered.sum()
    return stats
