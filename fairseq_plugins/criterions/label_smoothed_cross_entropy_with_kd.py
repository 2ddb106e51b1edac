"""``--criterion label_smoothed_cross_entropy_with_kd``: word-level KD from a (label-smoothed) teacher.

A thin fairseq adapter: the loss and the teacher diagnostics are :mod:`lskd.losses` and
:mod:`lskd.metrics`; the diagnostics are computed at validation only. The teacher comes from one checkpoint, an ensemble (``a.pt:b.pt``,
probabilities averaged), or an offline top-k cache made by ``lskd-dump-topk``. It is frozen, kept
out of the criterion's modules (so it is neither optimised nor saved in the student's
checkpoints), and follows the student to its device and dtype.

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
from fairseq.logging import metrics
from omegaconf import II

from fairseq_plugins.data import dataset_sha256
from fairseq_plugins.teacher import load_teachers, split_teacher_paths, teacher_log_probs
from lskd.losses import topk_scores, validate_kd_args, word_kd_loss
from lskd.metrics import teacher_statistics
from lskd.provenance import sha256_file
from lskd.topk_cache import TopKCache, TopKCacheError

logger = logging.getLogger(__name__)


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
        train_subset="train",
        valid_subset="valid",
        skip_invalid_size_inputs_valid_test=False,
    ):
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
        if teacher_topk_cache:
            teacher_sha256 = [sha256_file(p) for p in split_teacher_paths(teacher_path)] if teacher_path else None
            self._open_caches(task, teacher_topk_cache, vocab_size, teacher_sha256)
        elif teacher_path:
            self._teachers, _ = load_teachers(teacher_path, task)

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
    def teacher_scores(self, model, sample):
        """Teacher log-probabilities at T = 1, flattened: (N, V), or (N, k) with their indices."""
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
        scores = self._trim(teacher_log_probs(self._teachers, sample["net_input"]))
        if self.topk:
            return topk_scores(scores, self.topk)
        return scores, None

    # -- loss -----------------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        scores, indices = self.teacher_scores(model, sample)
        alpha = self.alpha if scores is not None else 0.0
        loss, nll_loss, kd_loss, teacher_entropy = word_kd_loss(
            lprobs, target, scores, alpha=alpha, temperature=self.temperature, epsilon=self.eps,
            ignore_index=self.padding_idx, teacher_indices=indices, teacher_normalized=indices is None,
        )
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "kd_loss": kd_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
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
