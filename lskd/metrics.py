"""Diagnostics of a teacher next to its student, summed over non-padding positions.

They let a user see at a glance how confident (entropy) and how good (NLL of the gold token) a
teacher is, and how far the student follows it (top-1 agreement). Sums, not means, so that
fairseq can add them across batches and workers before dividing.
"""
from __future__ import annotations

import torch

from lskd.losses import expected_log_prob, tempered_log_probs, upcast


@torch.no_grad()
def teacher_statistics(
    teacher_scores: torch.Tensor,
    student_scores: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    teacher_indices: torch.Tensor | None = None,
    teacher_entropy: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sums over positions where ``mask`` is true (flattened inputs: (N, V) or (N, k), (N,)).

    ``teacher_scores`` are log-probabilities at T = 1 (over V, or the teacher's own top-k values);
    ``student_scores`` log-probabilities or logits (only their top-1 is used).
    With ``teacher_indices`` (top-k), the entropy is that of the renormalised top-k distribution,
    and the gold token's NLL is summed only where the gold token is among the k
    (``teacher_gold_in_topk`` counts those positions). ``teacher_entropy``: the masked sum when the
    caller already has it (:class:`lskd.losses.KDLoss` at T = 1), which saves a pass over (N, V).
    """
    mask = mask.bool()
    renormalised = upcast(teacher_scores) if teacher_indices is None else tempered_log_probs(teacher_scores)
    if teacher_entropy is None:
        entropy = -expected_log_prob(renormalised.exp(), renormalised)
        teacher_entropy = entropy.masked_fill(~mask, 0.0).sum()
    if teacher_indices is None:
        gold_lp = renormalised.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        covered = mask
    else:
        hit = teacher_indices.eq(target.unsqueeze(-1))
        covered = mask & hit.any(-1)
        # the stored scores are the teacher's own log-probabilities, not renormalised ones
        gold_lp = torch.where(hit, teacher_scores.float(), torch.zeros_like(teacher_scores, dtype=torch.float)).sum(-1)
    stats = {
        "teacher_entropy": teacher_entropy,
        "teacher_agree": (top1_agreement(teacher_scores, student_scores, teacher_indices) & mask).sum(),
        "teacher_nll": (-gold_lp).masked_fill(~covered, 0.0).sum(),
        "teacher_nll_count": covered.sum(),
    }
    if teacher_indices is not None:
        stats["teacher_gold_in_topk"] = covered.sum()
    return stats


def top1_agreement(
    teacher_scores: torch.Tensor, student_scores: torch.Tensor, teacher_indices: torch.Tensor | None = None
) -> torch.Tensor:
    """Per position: is the student's top-1 class a top-1 class of the teacher (ties count)?

    With ``teacher_indices`` (top-k) the teacher's top-1 is looked up in the student instead.
    """
    if teacher_indices is None:
        student_top1 = student_scores.argmax(-1, keepdim=True)
        return teacher_scores.gather(-1, student_top1).squeeze(-1).eq(teacher_scores.amax(-1))
    teacher_top1 = teacher_indices.gather(-1, teacher_scores.argmax(-1, keepdim=True))
    return student_scores.gather(-1, teacher_top1).squeeze(-1).eq(student_scores.amax(-1))


class StabilityAccumulator:
    """Shen et al.'s stability metric (Eq. 2), streamed over batches; ``result`` gives ``1 - S``.

    ``1 - S = (1/K) * sum_c (1/n_c) * sum_{i in c} ||p_i - mean_c(p)||^2`` over the K gold classes
    seen. Since ``sum_i ||p_i - mean||^2 = sum_i ||p_i||^2 - n_c ||mean||^2``, each class keeps only
    a count, a V-dim sum and a scalar sum of squared norms: memory is ``classes x V x 8`` bytes
    (float64), whatever the number of examples. ``classes`` restricts the metric to those gold
    classes (e.g. the most frequent ones of a large vocabulary); others are ignored.
    """

    def __init__(self, num_outputs: int, classes: torch.Tensor | list[int] | None = None, max_classes: int | None = None):
        tracked = torch.arange(num_outputs) if classes is None else torch.as_tensor(classes, dtype=torch.long)
        if max_classes is not None and len(tracked) > max_classes:
            raise ValueError(f"{len(tracked)} classes to track exceed max_classes={max_classes}")
        self.classes = tracked
        self.slot = torch.full((num_outputs,), -1, dtype=torch.long)
        self.slot[tracked] = torch.arange(len(tracked))
        self.count = torch.zeros(len(tracked), dtype=torch.float64)
        self.sum = torch.zeros(len(tracked), num_outputs, dtype=torch.float64)
        self.sum_sq_norm = torch.zeros(len(tracked), dtype=torch.float64)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """``probs``: (N, V) probabilities; ``labels``: (N,) gold classes.

        Row-wise work stays in the input precision; only the class sums are float64.
        """
        slots = self.slot[labels.detach().cpu().long()]
        probs = probs.detach().cpu()
        keep = slots >= 0
        if not bool(keep.all()):  # copy the (N, V) rows only when some are not tracked
            probs, slots = probs[keep], slots[keep]
        self.count.index_add_(0, slots, torch.ones_like(slots, dtype=torch.float64))
        self.sum.index_add_(0, slots, probs.double())
        self.sum_sq_norm.index_add_(0, slots, torch.linalg.vecdot(probs, probs).double())

    def state_tensors(self) -> list[torch.Tensor]:
        """The sums this accumulator keeps; adding them in place across workers (all_reduce) merges their passes."""
        return [self.count, self.sum, self.sum_sq_norm]

    def per_class(self) -> dict[int, float]:
        """Intra-class variance ``(1/n_c) sum ||p_i - mean_c||^2`` of every class seen."""
        seen = self.count > 0
        n = self.count[seen]
        mean_sq = (self.sum[seen] / n.unsqueeze(-1)).pow(2).sum(-1)
        variance = (self.sum_sq_norm[seen] / n - mean_sq).clamp_min(0.0)
        return dict(zip(self.classes[seen].tolist(), variance.tolist()))

    def result(self) -> float:
        """``1 - S``: the mean intra-class variance over the classes seen (0 if none)."""
        values = list(self.per_class().values())
        return sum(values) / len(values) if values else 0.0


class CalibrationAccumulator:
    """Expected calibration error (equal-width confidence bins), accuracy and mean entropy, streamed."""

    def __init__(self, bins: int = 15):
        self.bins = bins
        self.count = torch.zeros(bins, dtype=torch.float64)
        self.confidence = torch.zeros(bins, dtype=torch.float64)
        self.correct = torch.zeros(bins, dtype=torch.float64)
        self.entropy = torch.zeros((), dtype=torch.float64)  # summed, in nats

    @torch.no_grad()
    def update(self, probs: torch.Tensor, labels: torch.Tensor, log_probs: torch.Tensor | None = None) -> None:
        """``probs``: (N, V); ``log_probs``, when the caller has them, save recomputing the logarithm."""
        probs, labels = probs.detach().cpu(), labels.detach().cpu().long()
        confidence, prediction = probs.max(-1)
        confidence = confidence.double()
        # bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 cannot occur
        index = (confidence * self.bins).ceil().long().clamp(1, self.bins) - 1
        self.count.index_add_(0, index, torch.ones_like(confidence))
        self.confidence.index_add_(0, index, confidence)
        self.correct.index_add_(0, index, prediction.eq(labels).double())
        log_probs = probs.log() if log_probs is None else log_probs.detach().cpu()
        self.entropy += -expected_log_prob(probs, log_probs).double().sum()

    def state_tensors(self) -> list[torch.Tensor]:
        """The sums this accumulator keeps; adding them in place across workers (all_reduce) merges their passes."""
        return [self.count, self.confidence, self.correct, self.entropy]

    @property
    def total(self) -> float:
        return float(self.count.sum())

    def ece(self) -> float:
        if self.total == 0:
            return 0.0
        gap = (self.correct - self.confidence).abs()  # per bin: n_b * |acc_b - conf_b|
        return float(gap.sum() / self.total)

    def accuracy(self) -> float:
        return float(self.correct.sum() / self.total) if self.total else 0.0

    def mean_entropy(self) -> float:
        """Mean entropy in nats."""
        return float(self.entropy) / self.total if self.total else 0.0
