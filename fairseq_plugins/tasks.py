"""fairseq translation tasks over binarized data, which sentences are too long, and batches.

What LSKD's commands (top-k dumps, decoding, analysis) need from fairseq's task machinery, built
with fairseq's own parser and defaults so that it sees the data as ``fairseq-train`` does.

**Too-long sentences.** fairseq batches a sentence pair only if its source and its target (in
tokens, end of sentence included) fit the positions that the task and every model accept
(:func:`accepted_positions`, fairseq's ``resolve_max_positions``). ``fairseq-train`` leaves longer
*training* pairs out with a warning; on a validation or test split it stops with an exception
unless ``--skip-invalid-size-inputs-valid-test``. :func:`check_lengths` makes that one decision,
with fairseq's own filter, for LSKD's commands, which then follow a named policy
(:mod:`lskd.too_long`) instead of failing inside fairseq.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from lskd.checkpoint import CheckpointError
from lskd.prepared import PreparedData
from lskd.too_long import LengthCheck

def accepted_positions(task, models: Sequence[torch.nn.Module]) -> tuple[int, int]:
    """(source, target) positions accepted by the task (its ``--max-source-positions`` and
    ``--max-target-positions``) and every model, as ``fairseq-train`` and ``fairseq-generate`` compute it."""
    from fairseq import utils

    return utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])


def _limits(max_positions: tuple[int | None, int | None]) -> tuple[int, int]:
    """``max_positions`` as fairseq's filter takes them: no limit (None) becomes the largest integer."""
    return tuple(sys.maxsize if limit is None else int(limit) for limit in max_positions)


def too_long_ids(dataset, max_positions: tuple[int | None, int | None]) -> tuple[int, ...]:
    """Sorted ids of ``dataset`` (a ``LanguagePairDataset``) whose source or target is longer than
    ``max_positions``; None leaves a side unchecked. fairseq's own filter, the one its batching applies."""
    _, ignored = dataset.filter_indices_by_size(np.arange(len(dataset), dtype=np.int64), _limits(max_positions))
    return tuple(sorted(int(i) for i in ignored))


def check_lengths(task, models: Sequence[torch.nn.Module], split: str,
                  max_positions: tuple[int | None, int | None] | None = None) -> LengthCheck:
    """Load ``split`` and find its sentences longer than ``max_positions`` (default: what the task and
    ``models`` accept, :func:`accepted_positions`)."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    limits = tuple(max_positions or accepted_positions(task, models))
    return LengthCheck(split, limits, len(dataset), too_long_ids(dataset, limits))


def translation_task(data: str | Path, src: str | None, tgt: str | None,
                     max_positions: tuple[int, int] | None = None):
    """A fairseq ``translation`` task over the binarized directory ``data`` (languages inferred when None;
    ``max_positions``: its ``--max-source-positions`` and ``--max-target-positions``, default fairseq's)."""
    import fairseq_plugins  # noqa: F401  (safe checkpoint loading, LSKD's components)
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(data), "--task", "translation"]
    argv += ["--source-lang", src] if src else []
    argv += ["--target-lang", tgt] if tgt else []
    if max_positions:
        argv += ["--max-source-positions", str(max_positions[0]), "--max-target-positions", str(max_positions[1])]
    args = options.parse_args_and_arch(options.get_generation_parser(), argv)
    with warnings.catch_warnings():  # fairseq 0.12's use of hydra's deprecated API: noise on every command
        warnings.filterwarnings("ignore", message=r"(?s).*hydra", category=UserWarning)
        cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task)


def task_and_model(checkpoint: str | Path, data: PreparedData) -> tuple[Any, torch.nn.Module, Any]:
    """The task over a prepared directory, the checkpoint's model on it (eval mode, CPU) and its
    :class:`fairseq_plugins.teacher.TeacherInfo` (sha256, label smoothing). A missing checkpoint is a
    :class:`lskd.checkpoint.CheckpointError`, found before the task is built."""
    from fairseq_plugins.teacher import EVAL_ROLES, load_teachers

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    task = translation_task(data.bin_dir, data.src, data.tgt)
    models, infos = load_teachers(str(checkpoint), task, EVAL_ROLES)
    return task, models[0], infos[0]


def split_batches(task, lengths: LengthCheck, max_tokens: int, device: torch.device, desc: str) -> Iterator[dict]:
    """Every sentence of ``lengths.split`` that is not too long, once, unshuffled, in batches.

    The caller has applied its too-long policy (:meth:`LengthCheck.enforce`): the sentences in
    ``lengths.too_long``, and only those, are left out. ``required_batch_size_multiple=1``: no tail
    batch is dropped. A sentence longer than ``max_tokens`` gets a batch of its own (fairseq would
    stop). Shows a progress bar.
    """
    from fairseq import utils
    from tqdm import tqdm

    dataset = task.dataset(lengths.split)
    kept = np.setdiff1d(np.arange(len(dataset)), np.asarray(lengths.too_long, dtype=np.int64))
    longest = int(dataset.num_tokens_vec(kept).max()) if len(kept) else 0
    batches = task.get_batch_iterator(
        dataset, max_tokens=max(max_tokens, longest), max_positions=_limits(lengths.max_positions),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    with tqdm(total=lengths.kept, unit="sent", desc=desc) as progress:
        for sample in batches:
            if device.type == "cuda":
                sample = utils.move_to_cuda(sample, device)
            yield sample
            progress.update(len(sample["id"]))
