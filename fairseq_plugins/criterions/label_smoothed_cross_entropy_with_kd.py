"""``--criterion label_smoothed_cross_entropy_with_kd``: word-level KD from a (label-smoothed) teacher.

A thin fairseq adapter: the loss and the teacher diagnostics are :mod:`lskd.losses` and
:mod:`lskd.metrics`; the diagnostics are computed at validation only. The teacher comes from one checkpoint, an ensemble (``a.pt:b.pt``,
probabilities averaged), or an offline top-k cache made by ``lskd-dump-topk``. It is frozen, kept
out of the criterion's modules (so it is neither optimised nor saved in the student's
checkpoints), and follows the student to its device and dtype. An online teacher's length limits bind
the student: one that accepts longer pairs is refused at start, or, with ``--teacher-too-long skip``,
trained without the pairs the teacher cannot take (counted as ``teacher_too_long``).

(No ``from __future__ import annotations`` here: fairseq reads the config fields' types at run time.)
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from omegaconf import II

from fairseq_plugins.data import dataset_sha256
from fairseq_plugins.teacher import load_teachers, split_teacher_paths, teacher_limits, teacher_log_probs
from lskd.errors import InvalidValueError
from lskd.losses import topk_scores, validate_kd_args, word_kd_loss
from lskd.metrics import teacher_statistics
from lskd.provenance import sha256_file
from lskd.too_long import TOO_LONG_POLICIES, TooLongError
from lskd.topk_cache import TopKCache, TopKCacheError

logger = logging.getLogger(__name__)


def refuse_non_finite_flags(**knobs: float) -> None:
    """Refuse a knob (given by its config field's name) that is inf or nan: fairseq's parser takes both
    as floats, and a temperature of inf passed every range check, then made the first update's
    gradients NaN. Raises :class:`lskd.errors.InvalidValueError` naming the flag."""
    for name, value in knobs.items():
        if not math.isfinite(value):
            raise InvalidValueError(f"--{name.replace('_', '-')} {value}: expected a finite number")


@dataclass
class LabelSmoothedCrossEntropyWithKDConfig(LabelSmoothedCrossEntropyCriterionConfig):
    kd_alpha: float = field(
        default=0.5,
        metadata={"help": "weight of the distillation term: (1 - alpha) * LS-CE + alpha * T^2 * KL; "
                          "0 gives exactly label_smoothed_cross_entropy"},
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "distillation temperature T (> 0) for teacher and student"}
    )
    teacher_path: Optional[str] = field(
        default=None,
        metadata={"help": "teacher checkpoint; several separated by ':' form an ensemble whose "
                          "probabilities are averaged"},
    )
    teacher_topk: int = field(
        default=0,
        metadata={"help": "keep the teacher's K most probable tokens per position, renormalised "
                          "(0 = full distribution)"},
    )
    teacher_topk_cache: Optional[str] = field(
        default=None,
        metadata={"help": "directory written by lskd-dump-topk: offline teacher, none in memory"},
    )
    teacher_too_long: ChoiceEnum(TOO_LONG_POLICIES) = field(
        default="error",
        metadata={"help": "a student whose --max-source-positions / --max-target-positions exceed an online "
                          "teacher's: error (refused at start, naming both limits) or skip (pairs longer than the "
                          "teacher accepts are left out of the loss, counted as teacher_too_long)"},
    )
    train_subset: str = II("dataset.train_subset")
    valid_subset: str = II("dataset.valid_subset")
    skip_invalid_size_inputs_valid_test: bool = II("dataset.skip_invalid_size_inputs_valid_test")


@register_criterion("label_smoothed_cross_entropy_with_kd", dataclass=LabelSmoothedCrossEntropyWithKDConfig)
class LabelSmoothedCrossEntropyWithKDCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        kd_alpha=0.5,
        kd_temperature=1.0,
        teacher_path=None,
        teacher_topk=0,
        teacher_topk_cache=None,
        teacher_too_long="error",
        train_subset="train",
        valid_subset="valid",
        skip_invalid_size_inputs_valid_test=False,
    ):
        refuse_non_finite_flags(label_smoothing=label_smoothing, kd_alpha=kd_alpha, kd_temperature=kd_temperature)
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not 0 <= label_smoothing < 1:  # fairseq's own criterion takes any value: 1 puts a negative weight on the gold
            raise ValueError(f"--label-smoothing {label_smoothing} must be in [0, 1)")
        validate_kd_args(kd_alpha, kd_temperature)
        vocab_size = len(task.target_dictionary)
        if teacher_topk < 0 or teacher_topk > vocab_size:
            raise ValueError(f"--teacher-topk {teacher_topk} must be between 0 and the vocabulary size ({vocab_size})")
        if kd_alpha > 0 and not (teacher_path or teacher_topk_cache):
            raise ValueError("--kd-alpha > 0 needs a teacher: --teacher-path or --teacher-topk-cache")
        self.alpha = kd_alpha
        self.temperature = kd_temperature
        self.topk = teacher_topk
        self.subsets = {True: train_subset, False: valid_subset.split(",")[0]}
        self.skip_invalid_valid = skip_invalid_size_inputs_valid_test
        # a plain list, not a ModuleList: the teacher must stay out of parameters() and state_dict()
        self._teachers = []
        self._caches = {}
        self._teacher_positions = None  # (source, target) limits of the teachers, with --teacher-too-long skip
        if teacher_topk_cache:
            if teacher_too_long == "skip":
                raise TopKCacheError("--teacher-too-long skip is for online teachers: a top-k cache already leaves "
                                     "out what its teacher cannot take (lskd-dump-topk --too-long skip)")
            teacher_sha256 = [sha256_file(p) for p in split_teacher_paths(teacher_path)] if teacher_path else None
            self._open_caches(task, teacher_topk_cache, vocab_size, teacher_sha256)
        elif teacher_path:
            self._teachers, _ = load_teachers(teacher_path, task)
            self._check_teacher_limits(task, split_teacher_paths(teacher_path), teacher_too_long)

    # -- teacher sources ------------------------------------------------------------------
    def _open_caches(self, task, directory, vocab_size, teacher_sha256):
        for training, split in self.subsets.items():
            path = Path(directory) / split
            if not path.is_dir():
                if training:
                    raise TopKCacheError(f"top-k cache {directory} has no '{split}' split (expected {path})")
                logger.warning(f"top-k cache has no '{split}' split: validation loss leaves out the KD term")
                self._caches[training] = None
                continue
            cache = TopKCache(path)
            cache.check(data_sha256=dataset_sha256(task, split), vocab_size=vocab_size, teacher_sha256=teacher_sha256)
            if self.topk and self.topk != cache.k:
                raise TopKCacheError(f"--teacher-topk {self.topk} differs from the cache's k={cache.k} ({path})")
            logger.info(
                f"teacher top-k cache {path}: k={cache.k}, {cache.manifest['sentences']} sentences, "
                f"teacher label smoothing {cache.manifest.get('teacher_label_smoothing')}"
            )
            self._caches[training] = cache
        opened = [cache for cache in self._caches.values() if cache is not None]
        if len({(cache.k, tuple(cache.manifest.get("teacher_sha256") or ())) for cache in opened}) > 1:
            raise TopKCacheError(f"top-k cache {directory}: its {self.subsets[True]} and {self.subsets[False]} splits "
                                 f"come from different teachers or k; dump them with one lskd-dump-topk run")
        self._check_skipped(task, directory)

    def _check_skipped(self, task, directory) -> None:
        """Refuse, at start, a cache whose skipped (too-long) sentences this training would batch.

        fairseq-train leaves out training pairs longer than the task's ``--max-source-positions`` /
        ``--max-target-positions``, and stops at validation on longer valid pairs unless
        ``--skip-invalid-size-inputs-valid-test``. With limits no larger than the cache's (and that flag
        when valid sentences were skipped) it never asks for a skipped sentence; the flags it needs are
        named in one message."""
        skipped = {training: cache for training, cache in self._caches.items()
                   if cache is not None and (cache.manifest.get("skipped") or {}).get("count")}
        if not skipped:
            return
        limits = [(c.manifest["too_long"]["max_source_positions"], c.manifest["too_long"]["max_target_positions"])
                  for c in skipped.values()]
        needed = tuple(min(side) for side in zip(*limits))
        ours = task.max_positions()
        flags = []
        if not isinstance(ours, tuple) or any(a is None or a > b for a, b in zip(ours, needed)):
            flags.append(f"--max-source-positions {needed[0]} --max-target-positions {needed[1]}")
        if False in skipped and not self.skip_invalid_valid:
            flags.append("--skip-invalid-size-inputs-valid-test")
        if flags:
            counts = ", ".join(f"{self.subsets[training]}: {cache.manifest['skipped']['count']} ({cache.skip_reason})"
                               for training, cache in skipped.items())
            raise TopKCacheError(
                f"top-k cache {directory} has no entry for sentences too long for its teacher ({counts}), and this "
                f"training (max positions {ours}) would batch them or stop at validation on them: pass "
                f"{' '.join(flags)} so that fairseq-train leaves out the same sentences"
            )

    def _check_teacher_limits(self, task, paths: list, policy: str) -> None:
        """Refuse, at start, a student that accepts longer pairs than its online teachers (``policy`` error),
        or note the teachers' limits, beyond which :meth:`forward` leaves pairs out (``policy`` skip).

        fairseq-train batches every pair within the student's ``--max-source-positions`` /
        ``--max-target-positions``; a longer pair than the teacher's makes a learned-position teacher
        fail with an IndexError at the first such batch, and a sinusoidal one score positions it never
        trained on."""
        limits = teacher_limits(self._teachers, paths)
        student = task.max_positions()
        if not limits.exceeded_sides(student):
            return
        if policy != "skip":
            raise TooLongError(limits.refusal(student, "--teacher-too-long skip"))
        logger.warning(f"--teacher-too-long skip: pairs longer than the teacher accepts (source > "
                       f"{limits.positions[0]} or target > {limits.positions[1]} tokens) are left out of the loss, "
                       f"counted as teacher_too_long")
        self._teacher_positions = limits.positions

    def _too_long(self, sample) -> Optional[torch.Tensor]:
        """(B,) bool: the pairs of ``sample`` longer than the teachers accept, with ``--teacher-too-long
        skip``; None without it. Lengths count the end of sentence, as fairseq's own filter does."""
        if self._teacher_positions is None:
            return None
        source_limit, target_limit = self._teacher_positions
        source_lengths = sample["net_input"]["src_lengths"]
        too_long = torch.zeros_like(source_lengths, dtype=torch.bool)
        if source_limit is not None:
            too_long |= source_lengths > source_limit
        if target_limit is not None:
            too_long |= sample["target"].ne(self.padding_idx).sum(-1) > target_limit
        return too_long

    def _leave_out(self, sample, too_long: torch.Tensor):
        """``sample`` with the ``too_long`` pairs' targets all padding: no loss, no gradient, no tokens.

        Left out rather than trained on cross-entropy alone: the student then learns from exactly the
        pairs that fairseq-train would batch with the teacher's limits as its own (the other fix the
        refusal names), and that a top-k cache holds (lskd-dump-topk --too-long skip), so its loss is one
        objective over every pair it sees, comparable between online and cached teachers. Cross-entropy
        alone on the long pairs would put all their weight on the gold tokens, where every other pair has
        1 - alpha on the gold and alpha on the teacher: an objective that changes with sentence length."""
        target = sample["target"].masked_fill(too_long.unsqueeze(-1), self.padding_idx)
        return {**sample, "target": target, "ntokens": int(target.ne(self.padding_idx).sum())}

    def _follow_student(self, model) -> None:
        reference = next(model.parameters())
        for teacher in self._teachers:
            parameter = next(teacher.parameters())
            if parameter.device != reference.device or parameter.dtype != reference.dtype:
                teacher.to(device=reference.device, dtype=reference.dtype)

    def _trim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Drop ignored prefix positions and flatten batch and time, (B, T, ...) -> (B*T, ...), as
        ``get_lprobs_and_target`` does."""
        if self.ignore_prefix_size > 0:
            tensor = tensor[:, self.ignore_prefix_size :]
        return tensor.reshape(-1, *tensor.shape[2:])

    @torch.no_grad()
    def teacher_scores(self, model, sample, too_long: Optional[torch.Tensor] = None):
        """Teacher log-probabilities at T = 1, flattened: (N, V), or (N, k) with their indices.
        ``too_long``: (B,) pairs the teachers do not see (uniform scores, which the loss leaves out)."""
        if self._caches:
            cache = self._caches.get(model.training)
            if cache is None:
                return None, None
            target = sample["target"]
            lengths = target.ne(self.padding_idx).sum(-1)
            indices, log_probs = cache.lookup(sample["id"].tolist(), lengths.tolist(), target.size(1))
            return self._trim(log_probs.to(target.device)), self._trim(indices.to(target.device))
        if not self._teachers:
            return None, None
        self._follow_student(model)
        if too_long is None or not too_long.any():
            scores = teacher_log_probs(self._teachers, sample["net_input"])
        elif too_long.all():
            return None, None
        else:
            scores = self._scores_of_kept_pairs(sample["net_input"], ~too_long)
        scores = self._trim(scores)
        if self.topk:
            return topk_scores(scores, self.topk)
        return scores, None

    def _scores_of_kept_pairs(self, net_input: dict, kept: torch.Tensor) -> torch.Tensor:
        """(B, T, V) teacher log-probabilities of the ``kept`` pairs, the teachers run on those alone;
        the other rows are uniform (finite, so that masking them leaves no NaN)."""
        batch = kept.size(0)
        rows = {key: value[kept] if torch.is_tensor(value) and value.size(0) == batch else value
                for key, value in net_input.items()}
        kept_scores = teacher_log_probs(self._teachers, rows)
        scores = kept_scores.new_full((batch, *kept_scores.shape[1:]), -math.log(kept_scores.size(-1)))
        scores[kept] = kept_scores
        return scores

    # -- loss -----------------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        too_long = self._too_long(sample)
        if too_long is not None:
            sample = self._leave_out(sample, too_long)
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        scores, indices = self.teacher_scores(model, sample, too_long)
        alpha = self.alpha if scores is not None else 0.0
        loss, nll_loss, kd_loss, teacher_entropy = word_kd_loss(
            lprobs, target, scores, alpha=alpha, temperature=self.temperature, epsilon=self.eps,
            ignore_index=self.padding_idx, teacher_indices=indices, teacher_normalized=indices is None,
        )
        nsentences = sample["target"].size(0) - (0 if too_long is None else int(too_long.sum()))
        sample_size = nsentences if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "kd_loss": kd_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        if too_long is not None:
            logging_output["teacher_too_long"] = int(too_long.sum())
        if scores is not None and not model.training:  # validation metrics: no dropout, no cost to training
            known_entropy = teacher_entropy if self.temperature == 1 else None  # the KD term's, at T = 1
            stats = teacher_statistics(scores, lprobs, target, target.ne(self.padding_idx), indices, known_entropy)
            logging_output.update({name: value.data for name, value in stats.items()})
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's LS metrics, plus the KD term and the teacher diagnostics (base 2 like nll_loss)."""
        super().reduce_metrics(logging_outputs)

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        ntokens = total("ntokens")
        metrics.log_scalar("kd_loss", total("kd_loss") / ntokens / math.log(2), ntokens, round=3)
        if any("teacher_too_long" in log for log in logging_outputs):  # pairs left out: a count, summed
            metrics.log_scalar_sum("teacher_too_long", total("teacher_too_long"), round=0)
        if not any("teacher_entropy" in log for log in logging_outputs):
            return
        metrics.log_scalar("teacher_entropy", total("teacher_entropy") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_scalar("teacher_agree", total("teacher_agree") / ntokens, ntokens, round=4)
        covered = total("teacher_nll_count")
        if covered > 0:
            metrics.log_scalar("teacher_nll", total("teacher_nll") / covered / math.log(2), covered, round=3)
        if any("teacher_gold_in_topk" in log for log in logging_outputs):
            metrics.log_scalar("teacher_gold_in_topk", total("teacher_gold_in_topk") / ntokens, ntokens, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
